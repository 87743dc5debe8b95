//! The crate's one integration-test binary (one libtorch link): each area is a module.

mod clip;
mod coco;
mod frechet;
mod inception;
mod resize;

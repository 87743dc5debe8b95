//! A batch's condition: text states with their mask, class labels, or none; the null
//! condition sampling guides against, and classifier-free-guidance dropout, which trains the
//! model on exactly that null condition.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// The conditioning of one batch.
#[derive(Debug)]
pub enum Conditioning {
    /// Text-encoder states (B,T,D) and their mask (B,T), 1 = token, 0 = padding.
    Text { tokens: Tensor, mask: Tensor },
    /// Class labels (B,) int64; [`MdmUNet::null_class`] is the unconditional class.
    Class(Tensor),
    /// No conditioning (models with `conditioning_feature_dim <= 0`).
    None,
}

impl Conditioning {
    /// The same tensors, shared (libtorch's `shallow_clone`).
    pub fn shallow_clone(&self) -> Conditioning {
        match self {
            Conditioning::Text { tokens, mask } => Conditioning::Text { tokens: tokens.shallow_clone(), mask: mask.shallow_clone() },
            Conditioning::Class(c) => Conditioning::Class(c.shallow_clone()),
            Conditioning::None => Conditioning::None,
        }
    }

    /// The same conditioning for the first `n` samples.
    pub fn narrow(&self, n: i64) -> Conditioning {
        match self {
            Conditioning::Text { tokens, mask } => Conditioning::Text {
                tokens: tokens.narrow(0, 0, n),
                mask: mask.narrow(0, 0, n),
            },
            Conditioning::Class(c) => Conditioning::Class(c.narrow(0, 0, n)),
            Conditioning::None => Conditioning::None,
        }
    }

    /// Batch-concatenation of two conditionings of the same kind (for guidance).
    /// Text conditionings are padded to the longer token count.
    pub fn cat(a: &Conditioning, b: &Conditioning) -> Result<Conditioning> {
        match (a, b) {
            (
                Conditioning::Text {
                    tokens: t1,
                    mask: m1,
                },
                Conditioning::Text {
                    tokens: t2,
                    mask: m2,
                },
            ) => {
                let n = t1.size()[1].max(t2.size()[1]);
                let pad_t = |t: &Tensor| {
                    let k = n - t.size()[1];
                    if k == 0 {
                        t.shallow_clone()
                    } else {
                        t.constant_pad_nd([0, 0, 0, k])
                    }
                };
                let pad_m = |m: &Tensor| {
                    let k = n - m.size()[1];
                    if k == 0 {
                        m.shallow_clone()
                    } else {
                        m.constant_pad_nd([0, k])
                    }
                };
                Ok(Conditioning::Text {
                    tokens: Tensor::cat(&[pad_t(t1), pad_t(t2)], 0),
                    mask: Tensor::cat(&[pad_m(m1), pad_m(m2)], 0),
                })
            }
            (Conditioning::Class(x), Conditioning::Class(y)) => {
                Ok(Conditioning::Class(Tensor::cat(&[x, y], 0)))
            }
            (Conditioning::None, Conditioning::None) => Ok(Conditioning::None),
            _ => Err(Error::input(
                "cannot combine conditionings of different kinds",
            )),
        }
    }
}

/// The null condition for `n` samples like `like`: no text (one zero token), or the null
/// class.
pub fn null_condition(like: &Conditioning, n: i64, null_class: Option<i64>) -> Result<Conditioning> {
    Ok(match like {
        Conditioning::Text { tokens, .. } => {
            let (d, dev) = (tokens.size()[2], tokens.device());
            Conditioning::Text {
                tokens: Tensor::zeros([n, 1, d], (tokens.kind(), dev)),
                mask: Tensor::ones([n, 1], (Kind::Float, dev)),
            }
        }
        Conditioning::Class(c) => {
            let null = null_class.ok_or_else(|| Error::input("the model has no null class"))?;
            Conditioning::Class(Tensor::full([n], null, (Kind::Int64, c.device())))
        }
        Conditioning::None => Conditioning::None,
    })
}

/// Classifier-free-guidance dropout (libtorch's RNG): each sample's condition becomes the
/// null condition with probability `p`. Text: its states are zeroed and only the first
/// position stays unmasked, exactly what [`null_condition`] gives at sampling time.
pub fn cfg_dropout(cond: Conditioning, p: f64, null_class: Option<i64>) -> Result<Conditioning> {
    if p <= 0.0 {
        return Ok(cond);
    }
    let b = match &cond {
        Conditioning::Text { tokens, .. } => tokens.size()[0],
        Conditioning::Class(c) => c.size()[0],
        Conditioning::None => return Ok(cond),
    };
    let device = match &cond {
        Conditioning::Text { tokens, .. } => tokens.device(),
        Conditioning::Class(c) => c.device(),
        Conditioning::None => Device::Cpu,
    };
    cfg_dropout_with(cond, &Tensor::rand([b], (Kind::Float, device)), p, null_class)
}

/// [`cfg_dropout`] with given uniform draws `u` (B,): sample i keeps its condition when
/// `u[i] ≥ p` (draws made per sample do not depend on the batch they ride in).
pub fn cfg_dropout_with(cond: Conditioning, u: &Tensor, p: f64, null_class: Option<i64>) -> Result<Conditioning> {
    if p <= 0.0 {
        return Ok(cond);
    }
    Ok(match cond {
        Conditioning::Text { tokens, mask } => {
            let keep = u.to_device(tokens.device()).ge(p);
            let keep_f = keep.to_kind(tokens.kind());
            let tokens = tokens * keep_f.view([-1, 1, 1]);
            let null_mask = mask.zeros_like();
            let _ = null_mask.narrow(1, 0, 1).fill_(1.0);
            let mask = mask.where_self(&keep.view([-1, 1]), &null_mask);
            Conditioning::Text { tokens, mask }
        }
        Conditioning::Class(c) => {
            let null = null_class.ok_or_else(|| Error::input("class dropout needs a model with a null class"))?;
            let keep = u.to_device(c.device()).ge(p);
            Conditioning::Class(c.where_self(&keep, &c.full_like(null)))
        }
        Conditioning::None => Conditioning::None,
    })
}

//! Writes the batches the Rust loader gives, for the Python package's tests to compare with:
//! `OUT/step-N.ids` (one id a line) and `OUT/step-N-RES.u8` (that resolution's raw NCHW pixels).
//!
//! usage: dump_batches SHARDS OUT BATCH SEED WORLD RANK STEPS RATIO   (RATIO like `64:1,32:1`)

use mdm_loader::LoaderBuilder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [shards, out, batch, seed, world, rank, steps, ratio] = &a[..] else {
        return Err("usage: dump_batches SHARDS OUT BATCH SEED WORLD RANK STEPS RATIO".into());
    };
    let ratio = ratio
        .split(',')
        .map(|p| {
            let (r, w) = p.split_once(':').ok_or("RATIO is RES:WEIGHT,...")?;
            Ok((r.parse()?, w.parse()?))
        })
        .collect::<Result<Vec<(u32, f64)>, Box<dyn std::error::Error>>>()?;
    let loader = LoaderBuilder::new()
        .source(shards.as_str(), 1.0)
        .batch_size(batch.parse()?)
        .seed(seed.parse()?)
        .rank(rank.parse()?, world.parse()?)
        .mixed_ratio(ratio)
        .workers(2)
        .build()?;
    let out = std::path::Path::new(out);
    std::fs::create_dir_all(out)?;
    for batch in loader.take(steps.parse()?) {
        let batch = batch?;
        std::fs::write(out.join(format!("step-{}.ids", batch.step)), batch.ids.join("\n"))?;
        for (res, px) in &batch.pixels {
            std::fs::write(out.join(format!("step-{}-{res}.u8", batch.step)), &px.data)?;
        }
    }
    Ok(())
}

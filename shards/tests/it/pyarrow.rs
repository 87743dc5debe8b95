//! The shards are plain Parquet: pyarrow (installed in .venv by scripts/setup.sh) reads them
//! with the schema documented in shards/FORMAT.md.

use crate::common;
use common::*;
use mdm_shards::*;
use std::path::PathBuf;

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("MDM_PYTHON") {
        return p.into();
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(p.exists(), "{} missing: run `bash scripts/setup.sh` (or `make test`) first", p.display());
    p
}

const SCRIPT: &str = r#"
import json, sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
d = sys.argv[1]
m = json.load(open(f"{d}/manifest.json"))
t = pa.concat_tables([pq.read_table(f"{d}/{s['file']}") for s in m["shards"]])
expect = [("id", pa.string()), ("source", pa.string()), ("source_sha256", pa.binary(32)),
          ("width", pa.uint32()), ("height", pa.uint32()), ("caption", pa.string()),
          ("label", pa.int32()), ("crop_box", pa.list_(pa.int32(), 4)),
          ("jpeg_256", pa.binary()), ("jpeg_64", pa.binary()),
          ("t5_tokens", pa.uint32()), ("t5_emb", pa.binary()), ("checksum", pa.uint64())]
got = [(f.name, f.type) for f in t.schema]
assert got == expect, got
md = t.schema.metadata
assert md[b"mdm.kind"] == b"text-image" and md[b"mdm.resolutions"] == b"256,64", md
enc = json.loads(md[b"mdm.text_encoder"])
assert enc == m["text_encoder"], (enc, m["text_encoder"])
out = []
for row in t.to_pylist():
    e = None
    if row["t5_emb"] is not None:
        e = np.frombuffer(row["t5_emb"], dtype="<f2").reshape(row["t5_tokens"], enc["dim"]).astype(np.float64).round(4).tolist()
    out.append({"id": row["id"], "caption": row["caption"], "crop_box": row["crop_box"],
                "jpeg_64_len": len(row["jpeg_64"]), "sha": row["source_sha256"].hex(), "emb": e})
print(json.dumps(out))
"#;

#[test]
fn pyarrow_reads_text_image_shards_with_the_documented_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(RecordKind::TextImage, vec![256, 64]).unwrap();
    let records: Vec<_> = (0..12).map(|i| image_record(i, RecordKind::TextImage, &[256, 64], 4)).collect();
    let opts = WriterOptions { text_encoder: Some(encoder(4)), max_shard_rows: Some(5), ..Default::default() };
    write_set(tmp.path(), &layout, records.clone(), opts);
    let out = std::process::Command::new(python()).arg("-c").arg(SCRIPT).arg(tmp.path()).output().unwrap();
    assert!(out.status.success(), "pyarrow failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), records.len());
    for (row, rec) in rows.iter().zip(&records) {
        let Body::Image(img) = &rec.body else { unreachable!() };
        assert_eq!(row["id"], rec.id.as_str());
        assert_eq!(row["caption"].as_str(), rec.caption.as_deref());
        assert_eq!(row["jpeg_64_len"], img.jpegs[1].len());
        assert_eq!(row["sha"], hex_of(&rec.source_sha256));
        match img.crop_box {
            Some(c) => assert_eq!(row["crop_box"], serde_json::json!(c)),
            None => assert!(row["crop_box"].is_null()),
        }
        match &rec.text {
            None => assert!(row["emb"].is_null()),
            Some(t) => {
                let emb = row["emb"].as_array().unwrap();
                assert_eq!(emb.len(), t.tokens as usize);
                // Compare against the f16 values we stored, decoded in Rust.
                for (k, tok) in emb.iter().enumerate() {
                    for (j, v) in tok.as_array().unwrap().iter().enumerate() {
                        let at = (k * 4 + j) * 2;
                        let want = half::f16::from_le_bytes([t.data[at], t.data[at + 1]]).to_f64();
                        assert!((v.as_f64().unwrap() - want).abs() < 1e-4, "token {k} dim {j}: {v} vs {want}");
                    }
                }
            }
        }
    }
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

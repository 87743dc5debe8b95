//! `mdm make-tiny-t5` then `mdm t5 encode`, checking the written tensors against the
//! library's own encoder on the same model.

use std::process::Command;

use mdm_ingest::t5::tch::{Kind, Tensor};
use mdm_ingest::t5::{Checkpoint, EncodeOptions, T5Device, TextEncoder};

fn mdm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mdm"))
}

#[test]
fn make_tiny_t5_then_encode() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny-t5");
    let out = mdm()
        .arg("make-tiny-t5")
        .arg(&model)
        .args(["--seed", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("UNTRAINED"));

    let captions = tmp.path().join("captions.txt");
    let lines = [
        "a dog on the beach",
        "two cats sitting on a red chair near the window",
        "",
        "the the the the the the the the the the the the the the the the the the the the",
    ];
    std::fs::write(&captions, lines.join("\n") + "\n").unwrap();
    let file = tmp.path().join("out.safetensors");
    let out = mdm()
        .args(["t5", "encode", "--model"])
        .arg(&model)
        .arg("--captions")
        .arg(&captions)
        .arg("--out")
        .arg(&file)
        .args(["--max-tokens", "16", "--device", "cpu"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("4 captions") && stdout.contains("1 truncated"),
        "{stdout}"
    );

    let ck = Checkpoint::open_file(&file).unwrap();
    let ids = ck.read("input_ids").unwrap().unwrap();
    let mask = ck.read("attention_mask").unwrap().unwrap();
    let hs = ck.read("last_hidden_state").unwrap().unwrap();
    assert_eq!(ids.size(), [4, 16]);
    assert_eq!(hs.size(), [4, 16, 64]);
    assert_eq!(hs.kind(), Kind::Float);

    let opts = EncodeOptions {
        max_tokens: 16,
        device: T5Device::Cpu,
        ..Default::default()
    };
    let mut te = TextEncoder::from_dir(&model, opts).unwrap();
    for (i, e) in te.encode(&lines).unwrap().into_iter().enumerate() {
        let e = e.unwrap();
        let n = e.tokens() as i64;
        let row: Vec<i64> = Vec::<i64>::try_from(ids.get(i as i64)).unwrap();
        let want: Vec<i64> = e.ids.iter().map(|&x| i64::from(x)).collect();
        assert_eq!(&row[..n as usize], want.as_slice());
        assert!(row[n as usize..].iter().all(|&x| x == 0));
        assert_eq!(mask.get(i as i64).sum(Kind::Int64).int64_value(&[]), n);
        let got = hs.get(i as i64).narrow(0, 0, n);
        let want = Tensor::from_slice(&e.states).view([n, 64]);
        assert!(got.equal(&want), "caption {i}: states differ");
        assert_eq!(
            hs.get(i as i64)
                .narrow(0, n, 16 - n)
                .abs()
                .sum(Kind::Double)
                .double_value(&[]),
            0.0
        );
    }
}

#[test]
fn encode_reports_a_missing_model_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let captions = tmp.path().join("c.txt");
    std::fs::write(&captions, "a cat\n").unwrap();
    let out = mdm()
        .args(["t5", "encode", "--model"])
        .arg(tmp.path().join("no-such-model"))
        .arg("--captions")
        .arg(&captions)
        .arg("--out")
        .arg(tmp.path().join("o.safetensors"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-model"), "{err}");
}

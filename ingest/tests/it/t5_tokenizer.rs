//! Tokenizer against `shared/reference/t5/tokenizer_cases.json`: ids and tokens exact,
//! truncation to 16 (15 pieces + `</s>`), rejection, and normalization.

use crate::t5_common;

use mdm_ingest::t5::{LongCaptions, T5Tokenizer, Tokenized};
use serde_json::Value;

fn cases(dir: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("tokenizer_cases.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn ids_tokens_and_normalization_match_reference() {
    let Some(dir) = t5_common::t5_reference() else {
        return;
    };
    // No effective limit here: the long case exceeds the default 128.
    let tok = T5Tokenizer::from_file(&dir.join("tokenizer.json"))
        .unwrap()
        .with_limit(100_000, LongCaptions::Truncate)
        .unwrap();
    let cases = cases(&dir);
    assert_eq!(cases.len(), 11);
    for c in &cases {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["ids"]);
        let got = tok.encode(text, 0).unwrap();
        assert_eq!(got.ids(), Some(want.as_slice()), "ids of {text:?}");
        assert!(!got.truncated());
        assert_eq!(
            tok.pieces(text).unwrap(),
            ids(&c["ids_without_eos"]),
            "pieces of {text:?}"
        );
        let enc = tok.inner().encode(text, true).unwrap();
        let want_tokens: Vec<&str> = c["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(
            enc.get_tokens(),
            want_tokens.as_slice(),
            "tokens of {text:?}"
        );
        assert_eq!(
            tok.normalize(text).unwrap(),
            c["normalized"].as_str().unwrap()
        );
    }
}

#[test]
fn truncation_to_16_keeps_eos() {
    let Some(dir) = t5_common::t5_reference() else {
        return;
    };
    let tok = T5Tokenizer::from_file(&dir.join("tokenizer.json"))
        .unwrap()
        .with_limit(16, LongCaptions::Truncate)
        .unwrap();
    let mut truncated = 0;
    for c in &cases(&dir) {
        let text = c["text"].as_str().unwrap();
        let got = tok.encode(text, 0).unwrap();
        let want = ids(&c["ids_truncated_16"]);
        assert_eq!(
            got.ids(),
            Some(want.as_slice()),
            "truncated ids of {text:?}"
        );
        assert_eq!(*want.last().unwrap(), 1, "</s> last");
        let full = ids(&c["ids"]).len();
        assert_eq!(got.truncated(), full > 16, "{text:?}");
        truncated += usize::from(got.truncated());
    }
    assert!(
        truncated >= 3,
        "fixture has several long captions, got {truncated}"
    );
}

#[test]
fn reject_policy_rejects_exactly_the_long_captions() {
    let Some(dir) = t5_common::t5_reference() else {
        return;
    };
    let tok = T5Tokenizer::from_file(&dir.join("tokenizer.json"))
        .unwrap()
        .with_limit(16, LongCaptions::Reject)
        .unwrap();
    for c in &cases(&dir) {
        let text = c["text"].as_str().unwrap();
        let full = ids(&c["ids"]);
        match tok.encode(text, 0).unwrap() {
            Tokenized::Rejected { full_len } => {
                assert!(full.len() > 16);
                assert_eq!(full_len, full.len());
            }
            Tokenized::Ids { ids, full_len } => {
                assert!(full.len() <= 16, "{text:?} should be rejected");
                assert_eq!(ids, full);
                assert_eq!(full_len, full.len());
            }
        }
    }
}

#[test]
fn limit_must_leave_room_for_eos() {
    let Some(dir) = t5_common::t5_reference() else {
        return;
    };
    let tok = T5Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    assert!(tok.with_limit(1, LongCaptions::Truncate).is_err());
}

#[test]
fn missing_or_malformed_tokenizer_is_a_typed_error_with_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    let e = T5Tokenizer::from_file(&p).err().unwrap().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    std::fs::write(&p, "{ not json").unwrap();
    let e = T5Tokenizer::from_file(&p).err().unwrap().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("tokenizer"),
        "{e}"
    );
}

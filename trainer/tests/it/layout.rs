//! Parameter layout of the published configs: building our model from
//! `configs/models/cc12m_*.toml` gives exactly ml-mdm's `state_dict` names, shapes and
//! totals (`keys_cc12m_*.tsv`, built by ml-mdm with conditioning_feature_dim = 2048).

use crate::common;

use std::collections::BTreeMap;

use mdm_trainer::config::ModelConfig;

fn check(name: &str, expected_entries: usize, expected_total: i64) {
    let Some(dir) = common::mlmdm_dir(name) else {
        return;
    };
    let tsv = std::fs::read_to_string(dir.join(format!("keys_{name}.tsv"))).expect("keys tsv");
    let mut want: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut total_line = None;
    for line in tsv.lines() {
        if let Some(rest) = line.strip_prefix('#') {
            total_line = Some(rest.to_string());
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "bad tsv line {line:?}");
        let shape: Vec<i64> = cols[1]
            .split(',')
            .map(|x| x.parse().expect("dim"))
            .collect();
        let numel: i64 = cols[2].parse().expect("numel");
        assert_eq!(shape.iter().product::<i64>(), numel);
        assert!(
            want.insert(cols[0].to_string(), shape).is_none(),
            "duplicate key {}",
            cols[0]
        );
    }
    let total_line = total_line.expect("total line");
    let tsv_total: i64 = total_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("total_params="))
        .and_then(|v| v.parse().ok())
        .expect("total_params in the tsv");
    assert_eq!(tsv_total, expected_total);
    assert_eq!(want.len(), expected_entries);

    let cfg = ModelConfig::from_file(
        common::workspace_root().join(format!("configs/models/{name}.toml")),
    )
    .expect("config");
    let got: BTreeMap<String, Vec<i64>> = mdm_trainer::model::parameter_shapes(&cfg)
        .expect("model")
        .into_iter()
        .map(|(k, s, _)| (k, s))
        .collect();

    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{name}: missing {missing:?}\nextra {extra:?}"
    );
    for (k, s) in &want {
        assert_eq!(&got[k], s, "{name}: shape of {k}");
    }
    let total: i64 = got.values().map(|s| s.iter().product::<i64>()).sum();
    assert_eq!(total, tsv_total, "{name}: total parameters");
    eprintln!(
        "{name}: {} entries, {total} parameters, equal to ml-mdm",
        got.len()
    );
}

/// One test for the three configs, so that at most one ~1.9 GB model is alive at a time.
#[test]
fn published_layouts_equal_mlmdm() {
    let _rng = common::torch_rng();
    check("cc12m_64x64", 713, 461_359_107);
    check("cc12m_256x256", 889, 476_613_958);
    check("cc12m_1024x1024", 1063, 480_970_057);
}

//! Run configuration: sections, overrides, and errors that name the key.

use swinfc_config::apply_override;
use swinfc_train::TrainConfig;

const BASE: &str = "
run: {name: t, dir: /tmp/x, seed: 3}
model: {preset: tiny, num_classes: 10}
data: {dataset: synthetic, classes: 10, resize: 144, crop: 128}
train: {global_batch: 8, micro_batch: 2, total_steps: 10, lr_backbone: 0.01, lr_new: 0.05}
";

fn parse(extra: &[&str]) -> Result<TrainConfig, String> {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(BASE).unwrap();
    for item in extra {
        apply_override(&mut doc, item).map_err(|e| e.to_string())?;
    }
    TrainConfig::from_yaml(doc).map_err(|e| e.to_string())
}

#[test]
fn defaults_and_overrides() {
    let cfg = parse(&["train.lr_new=0.01", "eval.every_steps=5"]).unwrap();
    assert_eq!(cfg.train.lr_new, 0.01);
    assert_eq!(cfg.eval.every_steps, 5);
    assert_eq!(cfg.train.momentum, 0.9);
    assert_eq!(cfg.run.seed, 3);
    assert_eq!(cfg.grad_accum(2).unwrap(), 2);
    assert!(cfg.resolved_yaml().contains("lr_new: 0.01"));
    assert_ne!(cfg.hash(), parse(&[]).unwrap().hash());
}

#[test]
fn errors_name_the_key() {
    let cases: &[(&[&str], &str)] = &[
        (&["train.lr_nwe=1"], "train.lr_nwe: unknown key"),
        (&["trian.lr_new=1"], "trian: unknown section"),
        (
            &["train.global_batch=7"],
            "train.global_batch: 7 is not a multiple of train.micro_batch 2",
        ),
        (&["train.micro_batch=many"], "train.micro_batch: invalid type"),
        (&["model.window_size=5"], "model.window_size:"),
        (
            &["train.precision=fp16"],
            "train.precision: expected fp32 or bf16, got fp16",
        ),
        (&["run.name=null"], "run.name:"),
    ];
    for (overrides, want) in cases {
        let err = parse(overrides).expect_err(want);
        assert!(
            err.starts_with(want),
            "{overrides:?}: got `{err}`, want `{want}…`"
        );
    }
    let cfg = parse(&[]).unwrap();
    let err = cfg.grad_accum(3).unwrap_err().to_string();
    assert_eq!(
        err,
        "train.global_batch: 8 is not divisible by world_size 3 × micro_batch 2 = 6"
    );
}

#[test]
fn shipped_configs_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let cfg = TrainConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if cfg.model.img_size == 384 {
            // The paper's setup: 4 GPUs × micro-batch 8 = batch 32, no accumulation.
            assert_eq!(cfg.grad_accum(4).unwrap(), 1, "{}", path.display());
        }
        seen += 1;
    }
    assert_eq!(seen, 6);
}

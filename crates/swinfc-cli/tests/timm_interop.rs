//! Official and timm checkpoints through `swinfc import-weights`, and our files back to timm:
//! the backbone logits must equal timm's, whatever layout the checkpoint was written in.

mod common;

use std::path::Path;

use common::*;

/// Imports `checkpoint`, runs `swinfc forward` at `img_size` and compares `logits.swin` with timm's.
fn assert_timm_logits(dir: &Path, checkpoint: &str, img_size: usize, input: &str, expected_key: &str) {
    let imported = dir.join(format!("imported-{img_size}.safetensors"));
    let stderr = swinfc(&[
        "import-weights",
        fixture(checkpoint).to_str().unwrap(),
        "-o",
        imported.to_str().unwrap(),
    ]);
    assert!(stderr.contains("converted checkpoint"), "{stderr}");

    let config = dir.join(format!("timm-{img_size}.yaml"));
    let text = std::fs::read_to_string(fixture("timm.yaml")).unwrap();
    std::fs::write(
        &config,
        text.replace("img_size: 128", &format!("img_size: {img_size}")),
    )
    .unwrap();
    let output = dir.join("out.safetensors");
    let stderr = swinfc(&[
        "forward",
        "--config",
        config.to_str().unwrap(),
        "--weights",
        imported.to_str().unwrap(),
        "--input",
        fixture(input).to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    // The checkpoint is a plain Swin: every branch parameter is reported as initialised.
    assert!(stderr.contains("branch_proj.s2.fc.weight"), "{stderr}");

    let got = &read_tensors(&output)["logits.swin"];
    let want = &read_tensors(&fixture("timm_expected.safetensors"))[expected_key];
    assert_eq!(got.shape, want.shape);
    let err = relative_error(&got.values, &want.values, 1e-6);
    assert!(
        err <= 1e-4,
        "{checkpoint} at {img_size}: relative error {err:.3e}"
    );
}

#[test]
fn timm_new_layout_reproduces_timm_logits() {
    let dir = tempfile::tempdir().unwrap();
    assert_timm_logits(
        dir.path(),
        "timm_new.safetensors",
        128,
        "inputs_128.safetensors",
        "logits.128",
    );
    assert_timm_logits(
        dir.path(),
        "timm_new.safetensors",
        256,
        "inputs_256.safetensors",
        "logits.256",
    );
}

#[test]
fn official_old_layout_reproduces_timm_logits() {
    let dir = tempfile::tempdir().unwrap();
    assert_timm_logits(
        dir.path(),
        "timm_old.pth",
        128,
        "inputs_128.safetensors",
        "logits.128",
    );
    assert_timm_logits(
        dir.path(),
        "timm_old.pth",
        256,
        "inputs_256.safetensors",
        "logits.256",
    );
}

/// Our weight files carry every timm key with timm's shape, so PyTorch's
/// `load_state_dict(strict=False)` into a timm SwinTransformer reports only our new modules.
#[test]
fn exported_weights_have_timm_keys_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.safetensors");
    let model = model_config(&fixture("timm.yaml")).init::<burn::backend::Flex>(3, &Default::default());
    swinfc_model::weights::write_safetensors(&ours, &swinfc_model::weights::state_dict(&model), None)
        .unwrap();

    let ours = read_tensors(&ours);
    let timm = read_tensors(&fixture("timm_new.safetensors"));
    for (key, t) in &timm {
        let mine = ours
            .get(key)
            .unwrap_or_else(|| panic!("timm key `{key}` missing from our file"));
        assert_eq!(mine.shape, t.shape, "{key}");
    }
    let extra: Vec<_> = ours.keys().filter(|k| !timm.contains_key(*k)).collect();
    assert!(!extra.is_empty());
    for key in extra {
        let root = key.split('.').next().unwrap();
        assert!(
            ["branch_proj", "eaca", "branch_head"].contains(&root),
            "unexpected key `{key}`"
        );
    }
}

#[test]
fn import_with_other_class_count_drops_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    swinfc(&[
        "import-weights",
        fixture("timm_old.pth").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--num-classes",
        "7",
    ]);
    let tensors = read_tensors(&out);
    assert!(!tensors.contains_key("head.fc.weight"));
    assert!(tensors.contains_key("layers.3.downsample.reduction.weight"));
    assert!(
        !tensors
            .keys()
            .any(|k| k.contains("relative_position_index") || k.contains("attn_mask"))
    );
}

#[test]
fn mis_shaped_backbone_key_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wide.yaml");
    let text = std::fs::read_to_string(fixture("timm.yaml")).unwrap();
    std::fs::write(&config, text.replace("embed_dim: 16", "embed_dim: 32")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_swinfc"))
        .args([
            "import-weights",
            fixture("timm_new.safetensors").to_str().unwrap(),
            "-o",
        ])
        .arg(dir.path().join("w.safetensors"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Names the first mismatched key (sorted) and both shapes.
    assert!(stderr.contains("`layers.0.blocks.0.attn.proj.bias`"), "{stderr}");
    assert!(stderr.contains("shape [16], the model expects [32]"), "{stderr}");
}

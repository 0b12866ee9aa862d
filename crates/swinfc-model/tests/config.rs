//! The `model:` and `loss:` sections: presets, overrides, and errors that name the key.

use swinfc_model::{LossConfig, ModelConfig, StageGeometry, model_and_loss_from_yaml};

fn parse(yaml: &str) -> Result<(ModelConfig, LossConfig), String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    model_and_loss_from_yaml(&doc).map_err(|e| e.to_string())
}

#[test]
fn explicit_keys_override_the_preset() {
    let (model, loss) =
        parse("model:\n  preset: swin_b_384\n  num_classes: 555\n  drop_path: 0.2\n").unwrap();
    let base = ModelConfig::preset("swin_b_384").unwrap();
    assert_eq!(model.num_classes, 555);
    assert_eq!(model.drop_path, 0.2);
    assert_eq!(
        (model.embed_dim, model.window_size, model.depths.clone()),
        (128, 12, vec![2, 2, 18, 2])
    );
    assert_eq!(model.img_size, base.img_size);
    assert_eq!(loss, LossConfig::new());
    assert_eq!(loss.betas, [0.4, 0.6, 0.8]);
    assert_eq!(loss.contrastive_margin, 0.4);
}

#[test]
fn every_preset_is_valid() {
    for name in swinfc_model::config::PRESETS {
        ModelConfig::preset(name).unwrap().validate().unwrap();
    }
}

#[test]
fn swin_b_384_stages_follow_the_clipping_rule() {
    let stages = ModelConfig::preset("swin_b_384").unwrap().stages();
    let g = |resolution, channels, heads, window, shift| StageGeometry {
        resolution,
        channels,
        heads,
        window,
        shift,
    };
    assert_eq!(
        stages,
        vec![
            g(96, 128, 4, 12, 6),
            g(48, 256, 8, 12, 6),
            g(24, 512, 16, 12, 6),
            g(12, 1024, 32, 12, 0)
        ]
    );
}

#[test]
fn errors_name_the_key() {
    let cases = [
        (
            "model:\n  preset: tiny\n  windw_size: 4\n",
            "model.windw_size: unknown key",
        ),
        ("model:\n  preset: huge\n", "model.preset: unknown preset `huge`"),
        (
            "model:\n  window_size: 5\n",
            "model.window_size: stage 1 resolution 32 is not divisible by window 5",
        ),
        (
            "model:\n  num_heads: [3, 2, 4, 8]\n",
            "model.num_heads: stage 1 has 32 channels, not divisible by 3 heads",
        ),
        (
            "model:\n  img_size: 130\n",
            "model.img_size: 130 is not divisible by patch_size 4",
        ),
        (
            "model:\n  img_size: 120\n",
            "model.img_size: the patch grid 30×30 must halve three times",
        ),
        (
            "model:\n  depths: [2, 2, 2]\n",
            "model.depths: SwinFC has exactly 4 stages",
        ),
        ("model:\n  embed_dim: many\n", "model.embed_dim: invalid type"),
        (
            "model:\n  preset: tiny\nloss:\n  alpha: 1\n",
            "loss.alpha: unknown key",
        ),
        ("loss: {}\n", "model: missing section"),
    ];
    for (yaml, want) in cases {
        let err = parse(yaml).expect_err(yaml);
        assert!(err.starts_with(want), "{yaml:?}: got `{err}`, want `{want}…`");
    }
}

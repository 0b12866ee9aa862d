//! Loading weights by name: what is missing, what is unexpected, and bias-table resizing.

use std::path::Path;

use burn::backend::Flex;
use swinfc_model::ModelConfig;
use swinfc_model::weights::{
    HostTensor, WeightsError, load_state_dict, read_state_dict, resize_bias_table, state_dict,
};

fn tiny() -> ModelConfig {
    ModelConfig {
        num_classes: 5,
        ..ModelConfig::preset("tiny").unwrap()
    }
}

#[test]
fn state_dict_round_trips_through_loading() {
    let source = tiny().init::<Flex>(1, &Default::default());
    let dict = state_dict(&source);
    let (loaded, report) = load_state_dict(tiny().init::<Flex>(2, &Default::default()), &dict).unwrap();
    assert_eq!(report.loaded, dict.len());
    assert!(report.initialised.is_empty() && report.unexpected.is_empty());
    assert_eq!(state_dict(&loaded), dict);
}

#[test]
fn missing_new_modules_keep_their_seeded_init_and_are_listed() {
    let source = state_dict(&tiny().init::<Flex>(1, &Default::default()));
    let mut dict = source.clone();
    dict.retain(|k, _| !k.starts_with("eaca."));
    dict.insert(
        "extra.thing".into(),
        HostTensor {
            shape: vec![1],
            data: vec![0.0],
        },
    );
    let fresh = tiny().init::<Flex>(2, &Default::default());
    let fresh_eaca = state_dict(&fresh)["eaca.s3.ea.mk.weight"].clone();
    let (loaded, report) = load_state_dict(fresh, &dict).unwrap();
    assert!(report.initialised.iter().all(|k| k.starts_with("eaca.")));
    assert_eq!(
        report.initialised.len(),
        source.keys().filter(|k| k.starts_with("eaca.")).count()
    );
    assert_eq!(report.unexpected, vec!["extra.thing".to_string()]);
    let after = state_dict(&loaded);
    assert_eq!(after["eaca.s3.ea.mk.weight"], fresh_eaca);
    assert_eq!(
        after["layers.2.blocks.1.mlp.fc1.weight"],
        source["layers.2.blocks.1.mlp.fc1.weight"]
    );
}

#[test]
fn missing_backbone_key_is_an_error_naming_it() {
    let mut dict = state_dict(&tiny().init::<Flex>(1, &Default::default()));
    dict.remove("layers.1.downsample.norm.weight");
    let err = load_state_dict(tiny().init::<Flex>(2, &Default::default()), &dict).unwrap_err();
    assert!(
        matches!(err, WeightsError::MissingBackbone { ref key } if key == "layers.1.downsample.norm.weight")
    );
    assert!(err.to_string().contains("layers.1.downsample.norm.weight"));
}

#[test]
fn bias_table_resize_is_torch_bicubic() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/parity/relpos_resize.safetensors");
    let tables = read_state_dict(&path).unwrap();
    let resized = resize_bias_table(&tables["table.w4"], 169).unwrap();
    let want = &tables["table.w4_to_w7_torch_bicubic"];
    assert_eq!(resized.shape, want.shape);
    let err = resized
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(err < 1e-5, "max abs error {err}");
    assert!(
        resize_bias_table(&tables["table.w4"], 50).is_none(),
        "50 rows is not an odd square"
    );
}

#[test]
fn official_wrapper_is_unwrapped_and_its_other_entries_dropped() {
    let weights = state_dict(&tiny().init::<Flex>(1, &Default::default()));
    let mut wrapped: swinfc_model::weights::StateDict = weights
        .iter()
        .map(|(k, v)| (format!("model.{k}"), v.clone()))
        .collect();
    wrapped.insert(
        "optimizer.state.0.momentum_buffer".into(),
        HostTensor {
            shape: vec![1],
            data: vec![1.0],
        },
    );
    let (dict, report) = swinfc_model::weights::to_new_layout(wrapped);
    assert_eq!(report.unwrapped.as_deref(), Some("model"));
    assert_eq!(report.layout, swinfc_model::weights::Layout::New);
    assert_eq!(dict, weights);
}

/// A .pth whose tensor claims 100000² float32 values over a one-element storage (zero stride,
/// tests/fixtures/make_hostile.py) is refused, naming the tensor, before anything is allocated
/// (it used to ask for 40 GB and abort).
#[test]
fn a_pth_that_claims_more_values_than_it_holds_is_refused_naming_the_tensor() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hostile/zero_stride.pth");
    let err = read_state_dict(&path).unwrap_err().to_string();
    assert!(err.contains("`patch_embed.proj.weight`"), "{err}");
    assert!(err.contains("[100000, 100000]"), "{err}");
    assert!(err.contains("the file lies about this tensor"), "{err}");
}

/// Files that are not what they seem are refused saying what each was taken for and why
/// (tests/fixtures/make_hostile.py): garbage named .pth, a legacy pickle of protocol 4, and a
/// safetensors file without a float tensor (it used to import as zero tensors, exit 0).
#[test]
fn a_weights_file_is_rejected_saying_what_it_was_read_as_and_why() {
    let hostile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hostile");
    for (file, wants) in [
        (
            "garbage.pth",
            ["neither safetensors", "nor a PyTorch file", "[07, 08, 09"],
        ),
        (
            "pickle4.pth",
            ["legacy PyTorch pickle (protocol 4", "0x95", "default zip format"],
        ),
        (
            "int64.safetensors",
            ["holds no floating-point tensor", "int64", "safetensors"],
        ),
    ] {
        let err = read_state_dict(&hostile.join(file)).unwrap_err().to_string();
        for want in wants {
            assert!(err.contains(want), "{file}: want `{want}` in: {err}");
        }
    }
}

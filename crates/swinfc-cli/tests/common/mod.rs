//! Shared by the integration tests: fixture paths, the fixture-weight generator (identical to
//! `tests/fixtures/make_parity.py`'s), running the `swinfc` binary, and tensor comparison.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use burn::backend::{Flex, flex::FlexDevice};
use safetensors::{Dtype, SafeTensors};
use swinfc_model::weights::{HostTensor, StateDict, state_dict_shapes};
use swinfc_model::{ModelConfig, model_and_loss_from_yaml};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/parity")
        .join(name)
}

pub fn model_config(path: &Path) -> ModelConfig {
    let doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    model_and_loss_from_yaml(&doc).unwrap().0
}

/// The deterministic fixture weights of a parameter (see tests/fixtures/README.md): SplitMix64
/// over an FNV-1a hash of the name; LayerNorm weights near 1, the rest scaled by 2/√fan_in.
pub fn fixture_param(name: &str, shape: &[usize]) -> HostTensor {
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let n: usize = shape.iter().product();
    let parts: Vec<&str> = name.split('.').collect();
    let is_norm_weight =
        parts.len() >= 2 && parts[parts.len() - 1] == "weight" && regex_like_norm(parts[parts.len() - 2]);
    let fan: usize = if shape.len() > 1 {
        shape[1..].iter().product()
    } else {
        shape[0]
    };
    let scale = (2.0 / (fan as f64).sqrt()) as f32;
    let data = (0..n as u64)
        .map(|i| {
            let z = seed.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let z = swinfc_model::drop_path::splitmix64(z);
            let v = (z >> 40) as f32 * (1.0f32 / (1u32 << 24) as f32) - 0.5;
            if is_norm_weight { 1.0 + v * 0.5 } else { v * scale }
        })
        .collect();
    HostTensor {
        shape: shape.to_vec(),
        data,
    }
}

/// `^norm\d?$`
fn regex_like_norm(s: &str) -> bool {
    match s.strip_prefix("norm") {
        Some("") => true,
        Some(rest) => rest.len() == 1 && rest.as_bytes()[0].is_ascii_digit(),
        None => false,
    }
}

/// Fixture weights for every parameter of the model `cfg` describes.
pub fn fixture_weights(cfg: &ModelConfig) -> StateDict {
    let model = cfg.init::<Flex>(0, &FlexDevice);
    state_dict_shapes(&model)
        .into_iter()
        .map(|(name, shape)| {
            let t = fixture_param(&name, &shape);
            (name, t)
        })
        .collect()
}

/// Runs the `swinfc` binary, panicking with its stderr when it fails.
pub fn swinfc(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_swinfc"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("the swinfc binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "swinfc {args:?} failed:\n{stderr}");
    stderr
}

/// A tensor read back from a safetensors file, widened to f64 for comparison.
#[derive(Debug)]
pub struct Loaded {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

pub fn read_tensors(path: &Path) -> BTreeMap<String, Loaded> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::I64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            let loaded = Loaded {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                values,
            };
            (name, loaded)
        })
        .collect()
}

/// max|a − b| / max(max|b|, floor): the error relative to the reference's scale.
pub fn relative_error(actual: &[f64], expected: &[f64], floor: f64) -> f64 {
    let scale = expected.iter().fold(floor, |m, v| m.max(v.abs()));
    let diff = actual
        .iter()
        .zip(expected)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

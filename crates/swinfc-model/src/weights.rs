//! Weight files. Everything on disk uses PyTorch names and layouts (timm's for the backbone,
//! swinfc-model.md §2.3 for the new modules), so our safetensors load in PyTorch and official or
//! timm checkpoints load here after [`convert_checkpoint`] (§2.2).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::ParamId;
use burn::tensor::{DType, TensorData, backend::Backend};
use burn_store::pytorch::PytorchReader;
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, TensorSnapshot};
use regex::Regex;
use safetensors::tensor::{Dtype, TensorView};

use crate::model::{ParamGroup, SwinFc};

/// A tensor in host memory, row-major, in PyTorch layout.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Parameter name → tensor, sorted by name.
pub type StateDict = BTreeMap<String, HostTensor>;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("backbone parameter `{key}` is missing from the weights")]
    MissingBackbone { key: String },
    #[error("`{key}`: the weights have shape {found:?}, the model expects {expected:?}")]
    Shape {
        key: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("applying weights failed: {0}")]
    Apply(String),
}

pub(crate) fn file_error(path: &Path, message: impl ToString) -> WeightsError {
    WeightsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Reads a `.safetensors` or PyTorch (`.pth`/`.pt`/`.bin`) file, told apart by their first bytes.
/// Non-float tensors (timm's index buffers) are left out; nested dicts come back dot-joined.
pub fn read_state_dict(path: &Path) -> Result<StateDict, WeightsError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let dict = match WeightsFormat::of(&bytes) {
        WeightsFormat::Safetensors => read_safetensors(path, &bytes)?,
        WeightsFormat::PytorchZip => read_pytorch(path).map_err(|e| {
            file_error(
                path,
                format!("read as a PyTorch zip file (torch.save): {}", reason(e)),
            )
        })?,
        WeightsFormat::PytorchPickle { protocol } => read_pytorch(path).map_err(|e| {
            file_error(
                path,
                format!(
                    "read as a legacy PyTorch pickle (protocol {protocol}, torch.save with \
                     _use_new_zipfile_serialization=False): {}; re-save it with torch.save's \
                     default zip format",
                    reason(e)
                ),
            )
        })?,
        WeightsFormat::Unknown => {
            let head = &bytes[..bytes.len().min(8)];
            return Err(file_error(
                path,
                format!(
                    "neither safetensors (an 8-byte header length, then a JSON header) nor a PyTorch \
                     file (a zip archive, or a pickle starting 0x80): the first bytes are {head:02x?}"
                ),
            ));
        }
    };
    if dict.is_empty() {
        return Err(file_error(
            path,
            "holds no floating-point tensor: nothing to load",
        ));
    }
    Ok(dict)
}

/// A file error's message without its path, to be put in a message that names the path once.
fn reason(e: WeightsError) -> String {
    match e {
        WeightsError::File { message, .. } => message,
        other => other.to_string(),
    }
}

/// What a weights file is, from its first bytes (not its name).
enum WeightsFormat {
    Safetensors,
    PytorchZip,
    PytorchPickle { protocol: u8 },
    Unknown,
}

impl WeightsFormat {
    fn of(bytes: &[u8]) -> WeightsFormat {
        let header_len = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        let fits = header_len.is_some_and(|n| n.checked_add(8).is_some_and(|end| end <= bytes.len() as u64));
        if fits && bytes.get(8) == Some(&b'{') {
            WeightsFormat::Safetensors
        } else if bytes.starts_with(b"PK\x03\x04") {
            WeightsFormat::PytorchZip
        } else if let [0x80, protocol @ 2..=5, ..] = bytes {
            WeightsFormat::PytorchPickle { protocol: *protocol }
        } else {
            WeightsFormat::Unknown
        }
    }
}

/// Parses safetensors bytes (e.g. weights received from rank 0).
pub fn state_dict_from_bytes(bytes: &[u8]) -> Result<StateDict, WeightsError> {
    read_safetensors(Path::new("<bytes>"), bytes)
}

fn read_safetensors(path: &Path, bytes: &[u8]) -> Result<StateDict, WeightsError> {
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| file_error(path, e))?;
    let mut dict = StateDict::new();
    for (name, view) in file.tensors() {
        let data = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 | Dtype::BF16 | Dtype::F64 => {
                let dtype = match view.dtype() {
                    Dtype::F16 => DType::F16,
                    Dtype::BF16 => DType::BF16,
                    _ => DType::F64,
                };
                TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype)
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .map_err(|e| file_error(path, format!("`{name}`: {e:?}")))?
            }
            _ => continue,
        };
        dict.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(dict)
}

fn read_pytorch(path: &Path) -> Result<StateDict, WeightsError> {
    let file_len = std::fs::metadata(path).map_err(|e| file_error(path, e))?.len();
    let reader = PytorchReader::new(path).map_err(|e| file_error(path, e))?;
    let mut dict = StateDict::new();
    for (name, snapshot) in reader.into_tensors() {
        if !snapshot.dtype.is_float() {
            continue;
        }
        // A weight's values are stored, one by one, in the file: a shape that needs more bytes
        // than the whole file is a forgery (a zero stride, an inflated dim) that would make us
        // allocate what it claims.
        let claimed = snapshot
            .shape
            .as_slice()
            .iter()
            .try_fold(snapshot.dtype.size() as u128, |n, &d| n.checked_mul(d as u128));
        if claimed.is_none_or(|bytes| bytes > u128::from(file_len)) {
            return Err(file_error(
                path,
                format!(
                    "`{name}`: its shape {:?} of {:?} needs more bytes than the whole file ({file_len}); \
                     the file lies about this tensor",
                    snapshot.shape.as_slice(),
                    snapshot.dtype
                ),
            ));
        }
        let data = snapshot
            .to_data()
            .map_err(|e| file_error(path, format!("`{name}`: {e:?}")))?;
        let shape = data.shape.to_vec();
        let data = data
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| file_error(path, format!("`{name}`: {e:?}")))?;
        dict.insert(name, HostTensor { shape, data });
    }
    Ok(dict)
}

/// Writes f32 safetensors with `metadata` in the header.
pub fn write_safetensors(
    path: &Path,
    dict: &StateDict,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<(), WeightsError> {
    let bytes = safetensors_bytes(dict, metadata).map_err(|e| file_error(path, e))?;
    std::fs::write(path, bytes).map_err(|e| file_error(path, e))
}

/// The safetensors serialisation of `dict` (for callers that write files their own way).
pub fn safetensors_bytes(
    dict: &StateDict,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let raw: Vec<(&String, Vec<u8>, &Vec<usize>)> = dict
        .iter()
        .map(|(name, t)| {
            (
                name,
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                &t.shape,
            )
        })
        .collect();
    let views = raw
        .iter()
        .map(|(name, bytes, shape)| Ok((name.as_str(), TensorView::new(Dtype::F32, shape.to_vec(), bytes)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    safetensors::serialize(views, metadata)
}

/// The model's parameters under their PyTorch names and layouts.
pub fn state_dict<B: Backend>(model: &SwinFc<B>) -> StateDict {
    model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
        .into_iter()
        .map(|snapshot| {
            let data = snapshot
                .to_data()
                .expect("a live parameter always materialises")
                .convert::<f32>();
            let tensor = HostTensor {
                shape: data.shape.to_vec(),
                data: data.to_vec::<f32>().expect("converted to f32 above"),
            };
            (snapshot.full_path(), tensor)
        })
        .collect()
}

/// What loading found, for the user to read.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub loaded: usize,
    /// New-module parameters absent from the file: they keep their seeded initialisation.
    pub initialised: Vec<String>,
    /// Keys in the file that the model does not have.
    pub unexpected: Vec<String>,
}

/// Loads `dict` into `model` by name. A missing or mis-shaped backbone key, or any mis-shaped
/// key, is an error; missing new-module keys keep their initial values and are reported.
pub fn load_state_dict<B: Backend>(
    mut model: SwinFc<B>,
    dict: &StateDict,
) -> Result<(SwinFc<B>, LoadReport), WeightsError> {
    let expected = state_dict_shapes(&model);
    let mut report = LoadReport::default();
    for (key, shape) in &expected {
        match dict.get(key) {
            Some(t) if &t.shape != shape => {
                return Err(WeightsError::Shape {
                    key: key.clone(),
                    found: t.shape.clone(),
                    expected: shape.clone(),
                });
            }
            Some(_) => report.loaded += 1,
            None if ParamGroup::of(key) == ParamGroup::Backbone => {
                return Err(WeightsError::MissingBackbone { key: key.clone() });
            }
            None => report.initialised.push(key.clone()),
        }
    }
    report.unexpected = dict
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .cloned()
        .collect();

    let snapshots = dict
        .iter()
        .filter(|(k, _)| expected.contains_key(*k))
        .map(|(name, t)| {
            TensorSnapshot::from_data(
                TensorData::new(t.data.clone(), t.shape.clone()),
                name.split('.').map(str::to_string).collect(),
                Vec::new(),
                ParamId::new(),
            )
        })
        .collect();
    let result = model.apply(snapshots, None, Some(Box::new(PyTorchToBurnAdapter)), false);
    if !result.errors.is_empty() {
        return Err(WeightsError::Apply(format!("{:?}", result.errors)));
    }
    Ok((model, report))
}

/// Names and PyTorch-layout shapes of the model's parameters, without copying their values.
pub fn state_dict_shapes<B: Backend>(model: &SwinFc<B>) -> BTreeMap<String, Vec<usize>> {
    model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
        .into_iter()
        .map(|s| (s.full_path(), s.shape.to_vec()))
        .collect()
}

/// The layout a checkpoint was written in (§2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Official Microsoft code and timm < 0.9: downsample at the end of a stage, `head.*`.
    Old,
    /// timm ≥ 0.9 and ours: downsample at the start of a stage, `head.fc.*`.
    New,
}

/// What [`convert_checkpoint`] changed.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub layout: Layout,
    /// Wrapper prefix removed (`model.` or `state_dict.`), if any.
    pub unwrapped: Option<String>,
    /// Buffers and mismatched heads that were dropped.
    pub dropped: Vec<String>,
    /// Bias tables resized bicubically: (name, from rows, to rows).
    pub resized: Vec<(String, usize, usize)>,
}

/// Converts an official/timm checkpoint to our names (§2.2) and, given the target model's
/// shapes, fits it to them (see [`fit_to`]).
pub fn convert_checkpoint(
    dict: StateDict,
    target: Option<&BTreeMap<String, Vec<usize>>>,
) -> (StateDict, ConvertReport) {
    let (mut dict, mut report) = to_new_layout(dict);
    if let Some(target) = target {
        fit_to(&mut dict, target, &mut report);
    }
    (dict, report)
}

/// Unwraps `model`/`state_dict`, drops timm's buffers and moves the old layout's downsample
/// (end of stage i → start of stage i+1) and head (`head.` → `head.fc.`).
pub fn to_new_layout(mut dict: StateDict) -> (StateDict, ConvertReport) {
    let mut report = ConvertReport {
        layout: Layout::New,
        unwrapped: None,
        dropped: Vec::new(),
        resized: Vec::new(),
    };
    // Official checkpoints wrap the weights as {'model': …}, sometimes beside optimizer state.
    for prefix in ["model.", "state_dict."] {
        if dict.contains_key(&format!("{prefix}patch_embed.proj.weight")) {
            dict = dict
                .into_iter()
                .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v)))
                .collect();
            report.unwrapped = Some(prefix.trim_end_matches('.').to_string());
        }
    }
    let buffers: Vec<String> = dict
        .keys()
        .filter(|k| k.contains("relative_position_index") || k.contains("attn_mask"))
        .cloned()
        .collect();
    for key in buffers {
        dict.remove(&key);
        report.dropped.push(key);
    }

    let old = dict.keys().any(|k| k.starts_with("layers.0.downsample."))
        && !dict.keys().any(|k| k.starts_with("head.fc."));
    if old {
        report.layout = Layout::Old;
        let downsample = Regex::new(r"^layers\.(\d+)\.downsample\.").expect("valid regex");
        dict = dict
            .into_iter()
            .map(|(key, value)| {
                let key = if let Some(c) = downsample.captures(&key) {
                    let stage: usize = c[1].parse().expect("the regex matched digits");
                    format!("layers.{}.downsample.{}", stage + 1, &key[c[0].len()..])
                } else if let Some(rest) = key.strip_prefix("head.") {
                    format!("head.fc.{rest}")
                } else {
                    key
                };
                (key, value)
            })
            .collect();
    }

    (dict, report)
}

/// Drops a head whose class count differs from `target`'s and bicubically resizes relative
/// position tables whose window differs.
pub fn fit_to(dict: &mut StateDict, target: &BTreeMap<String, Vec<usize>>, report: &mut ConvertReport) {
    let mismatched_head = ["head.fc.weight", "head.fc.bias"]
        .iter()
        .any(|k| matches!((dict.get(*k), target.get(*k)), (Some(t), Some(s)) if &t.shape != s));
    if mismatched_head {
        for key in ["head.fc.weight", "head.fc.bias"] {
            if dict.remove(key).is_some() {
                report.dropped.push(key.to_string());
            }
        }
    }
    for (key, table) in dict.iter_mut() {
        if !key.ends_with("relative_position_bias_table") {
            continue;
        }
        let Some(shape) = target.get(key) else { continue };
        if shape.len() == 2
            && table.shape.len() == 2
            && shape[1] == table.shape[1]
            && shape[0] != table.shape[0]
        {
            let from = table.shape[0];
            if let Some(resized) = resize_bias_table(table, shape[0]) {
                *table = resized;
                report.resized.push((key.clone(), from, shape[0]));
            }
        }
    }
}

/// Resizes a relative-position bias table [(2w−1)², heads] to `rows` = (2w'−1)² rows, bicubically
/// over its (2w−1)×(2w−1) grid as torch's `interpolate(mode="bicubic", align_corners=False)`.
/// This is the official Microsoft loader's resize (spec §2.2 rule 5); timm 1.0's
/// `checkpoint_filter_fn` uses a BEiT-style geometric resize instead, which differs by up to ~0.2.
/// `None` when either row count is not an odd square.
pub fn resize_bias_table(table: &HostTensor, rows: usize) -> Option<HostTensor> {
    let side_of = |n: usize| {
        let s = (n as f64).sqrt().round() as usize;
        (s * s == n && s % 2 == 1).then_some(s)
    };
    let (src, dst) = (side_of(table.shape[0])?, side_of(rows)?);
    let heads = table.shape[1];
    let mut out = vec![0.0f32; rows * heads];
    for h in 0..heads {
        let plane: Vec<f32> = (0..src * src).map(|i| table.data[i * heads + h]).collect();
        let resized = bicubic_resize(&plane, src, dst);
        for (i, v) in resized.into_iter().enumerate() {
            out[i * heads + h] = v;
        }
    }
    Some(HostTensor {
        shape: vec![rows, heads],
        data: out,
    })
}

/// torch's bicubic (A = −0.75, half-pixel centres, edge-clamped taps) on a square plane.
fn bicubic_resize(plane: &[f32], src: usize, dst: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = src as f64 / dst as f64;
    // For each output coordinate: four source taps and their weights.
    let taps: Vec<([usize; 4], [f64; 4])> = (0..dst)
        .map(|o| {
            let x = (o as f64 + 0.5) * scale - 0.5;
            let x0 = x.floor();
            let t = x - x0;
            let idx = |d: i64| (x0 as i64 + d).clamp(0, src as i64 - 1) as usize;
            (
                [idx(-1), idx(0), idx(1), idx(2)],
                [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)],
            )
        })
        .collect();
    let mut out = Vec::with_capacity(dst * dst);
    for (ys, wy) in &taps {
        for (xs, wx) in &taps {
            let mut v = 0.0;
            for (y, wy) in ys.iter().zip(wy) {
                let row: f64 = xs
                    .iter()
                    .zip(wx)
                    .map(|(x, wx)| wx * plane[y * src + x] as f64)
                    .sum();
                v += wy * row;
            }
            out.push(v as f32);
        }
    }
    out
}

/// Reads any supported checkpoint, converts it against the model's own shapes and loads it.
pub fn load_pretrained<B: Backend>(
    model: SwinFc<B>,
    path: &Path,
) -> Result<(SwinFc<B>, ConvertReport, LoadReport), WeightsError> {
    let target = state_dict_shapes(&model);
    let (dict, convert) = convert_checkpoint(read_state_dict(path)?, Some(&target));
    let (model, load) = load_state_dict(model, &dict)?;
    Ok((model, convert, load))
}

/// `swinfc import-weights`: converts the checkpoint at `path` to our names. With `model`, fits it
/// to the model's shapes and checks that it loads; else `num_classes` drops a head of another size.
pub fn import_checkpoint<B: Backend>(
    path: &Path,
    model: Option<SwinFc<B>>,
    num_classes: Option<usize>,
) -> Result<(StateDict, ConvertReport, LoadReport), WeightsError> {
    let (mut dict, mut convert) = to_new_layout(read_state_dict(path)?);
    let target = match (&model, num_classes) {
        (Some(model), _) => Some(state_dict_shapes(model)),
        (None, Some(k)) => dict.get("norm.weight").map(|norm| {
            BTreeMap::from([
                ("head.fc.weight".to_string(), vec![k, norm.shape[0]]),
                ("head.fc.bias".to_string(), vec![k]),
            ])
        }),
        (None, None) => None,
    };
    if let Some(target) = &target {
        fit_to(&mut dict, target, &mut convert);
    }
    let load = match model {
        Some(model) => load_state_dict(model, &dict)?.1,
        None => LoadReport::default(),
    };
    Ok((dict, convert, load))
}

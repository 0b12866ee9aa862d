//! Model and loss configuration: the `model:` and `loss:` sections of a run's YAML.
//!
//! A `preset` supplies every architecture value; keys given next to it override the preset.
//! Every key is checked by name so a typo is an error naming `model.<key>`, never a silent default.

use burn::config::Config;
use serde_yaml::Value;
use swinfc_config::{ConfigError, Section, one_of};

/// SwinFC architecture (swinfc-model.md §1). Field names are the YAML keys.
#[derive(Config, Debug, PartialEq)]
pub struct ModelConfig {
    pub img_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    /// Blocks per stage; SwinFC has exactly four stages (branches tap stages 2, 3 and 4).
    pub depths: Vec<usize>,
    pub num_heads: Vec<usize>,
    pub window_size: usize,
    pub mlp_ratio: f64,
    /// Stochastic-depth rate of the last block; rates rise linearly from 0 over all blocks.
    pub drop_path: f64,
    /// D: the common width of the three branches (§1.2).
    pub branch_dim: usize,
    /// M: the external-attention memory size (§1.3).
    pub ea_memory: usize,
    pub num_classes: usize,
    /// Weight of FFM's cross-stage terms (eq. 12 has none, i.e. 1; FBSD's code used 0.001).
    #[config(default = 1.0)]
    pub ffm_scale: f64,
}

/// Loss weights of eq. 16.
#[derive(Config, Debug, PartialEq)]
pub struct LossConfig {
    /// β₂, β₃, β₄: weights of the stage-2/3/4 branch cross-entropies.
    #[config(default = "[0.4, 0.6, 0.8]")]
    pub betas: [f64; 3],
    /// α of the contrastive loss (eq. 15).
    #[config(default = 0.4)]
    pub contrastive_margin: f64,
}

/// Presets named by `model.preset`. `tiny` is the test configuration of §1.1.
pub const PRESETS: [&str; 5] = ["tiny", "swin_t_224", "swin_s_224", "swin_b_224", "swin_b_384"];

/// Geometry of one backbone stage after timm's clipping rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageGeometry {
    /// Token grid side (square images only).
    pub resolution: usize,
    pub channels: usize,
    pub heads: usize,
    /// Window side: `window_size`, or the resolution when that is smaller.
    pub window: usize,
    /// Shift of odd blocks: `window / 2`, or 0 when one window covers the stage.
    pub shift: usize,
}

impl ModelConfig {
    pub fn preset(name: &str) -> Option<Self> {
        let (img, embed, depths, heads, window, branch, memory): (_, _, &[usize], &[usize], _, _, _) =
            match name {
                "tiny" => (128, 32, &[2, 2, 2, 2], &[1, 2, 4, 8], 4, 256, 16),
                "swin_t_224" => (224, 96, &[2, 2, 6, 2], &[3, 6, 12, 24], 7, 768, 64),
                "swin_s_224" => (224, 96, &[2, 2, 18, 2], &[3, 6, 12, 24], 7, 768, 64),
                "swin_b_224" => (224, 128, &[2, 2, 18, 2], &[4, 8, 16, 32], 7, 1024, 64),
                "swin_b_384" => (384, 128, &[2, 2, 18, 2], &[4, 8, 16, 32], 12, 1024, 64),
                _ => return None,
            };
        Some(Self::new(
            img,
            4,
            embed,
            depths.to_vec(),
            heads.to_vec(),
            window,
            4.0,
            0.1,
            branch,
            memory,
            200,
        ))
    }

    /// The smallest model with every component, for tests and the probe: `tiny`'s depths and
    /// heads at 32² inputs, so the last stage is one token (the case Burn's GPU backends got
    /// wrong, tests/wgpu.rs), widths 8 and 16, 4 memory units, 4 classes, no drop-path.
    pub fn minimal() -> Self {
        Self {
            img_size: 32,
            embed_dim: 8,
            branch_dim: 16,
            ea_memory: 4,
            num_classes: 4,
            drop_path: 0.0,
            ..Self::preset("tiny").expect("the tiny preset")
        }
    }

    /// Reads the `model:` section: a preset (default `tiny`) overridden by explicit keys.
    pub fn from_yaml(section: &Value) -> Result<Self, ConfigError> {
        let mut s = Section::new(Some(section), "model")?;
        let preset: String = s.get("preset", "tiny".into())?;
        let mut cfg = Self::preset(&preset).ok_or_else(|| {
            s.error(
                "preset",
                format!("unknown preset `{preset}`; expected {}", one_of(&PRESETS)),
            )
        })?;
        s.set("img_size", &mut cfg.img_size)?;
        s.set("patch_size", &mut cfg.patch_size)?;
        s.set("embed_dim", &mut cfg.embed_dim)?;
        s.set("depths", &mut cfg.depths)?;
        s.set("num_heads", &mut cfg.num_heads)?;
        s.set("window_size", &mut cfg.window_size)?;
        s.set("mlp_ratio", &mut cfg.mlp_ratio)?;
        s.set("drop_path", &mut cfg.drop_path)?;
        s.set("branch_dim", &mut cfg.branch_dim)?;
        s.set("ea_memory", &mut cfg.ea_memory)?;
        s.set("num_classes", &mut cfg.num_classes)?;
        s.set("ffm_scale", &mut cfg.ffm_scale)?;
        s.finish()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects shapes the architecture cannot realise, naming the key to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("img_size", self.img_size),
            ("patch_size", self.patch_size),
            ("embed_dim", self.embed_dim),
            ("window_size", self.window_size),
            ("branch_dim", self.branch_dim),
            ("ea_memory", self.ea_memory),
            ("num_classes", self.num_classes),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(format!("model.{key}"), "must be at least 1"));
            }
        }
        if self.depths.len() != 4 {
            return Err(ConfigError::new(
                "model.depths",
                format!("SwinFC has exactly 4 stages, got {}", self.depths.len()),
            ));
        }
        if let Some(i) = self.depths.iter().position(|&d| d == 0) {
            return Err(ConfigError::new(
                "model.depths",
                format!("stage {} has no block", i + 1),
            ));
        }
        if self.num_heads.len() != self.depths.len() {
            return Err(ConfigError::new(
                "model.num_heads",
                format!(
                    "{} entries for {} stages",
                    self.num_heads.len(),
                    self.depths.len()
                ),
            ));
        }
        if self.mlp_ratio.is_nan() || self.mlp_ratio <= 0.0 {
            return Err(ConfigError::new("model.mlp_ratio", "must be positive"));
        }
        if !(0.0..1.0).contains(&self.drop_path) {
            return Err(ConfigError::new("model.drop_path", "must be in [0, 1)"));
        }
        if !self.img_size.is_multiple_of(self.patch_size) {
            return Err(ConfigError::new(
                "model.img_size",
                format!(
                    "{} is not divisible by patch_size {}",
                    self.img_size, self.patch_size
                ),
            ));
        }
        let grid = self.img_size / self.patch_size;
        if !grid.is_multiple_of(8) {
            return Err(ConfigError::new(
                "model.img_size",
                format!(
                    "the patch grid {grid}×{grid} must halve three times (img_size / patch_size divisible by 8)"
                ),
            ));
        }
        for (i, heads) in self.num_heads.iter().enumerate() {
            let channels = self.embed_dim << i;
            if *heads == 0 || !channels.is_multiple_of(*heads) {
                return Err(ConfigError::new(
                    "model.num_heads",
                    format!(
                        "stage {} has {channels} channels, not divisible by {heads} heads",
                        i + 1
                    ),
                ));
            }
            let resolution = grid >> i;
            if resolution > self.window_size && !resolution.is_multiple_of(self.window_size) {
                return Err(ConfigError::new(
                    "model.window_size",
                    format!(
                        "stage {} resolution {resolution} is not divisible by window {}",
                        i + 1,
                        self.window_size
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The four stages' geometry, with the clipping rule (§1.1) applied.
    pub fn stages(&self) -> Vec<StageGeometry> {
        let grid = self.img_size / self.patch_size;
        (0..self.depths.len())
            .map(|i| {
                let resolution = grid >> i;
                let clipped = resolution <= self.window_size;
                StageGeometry {
                    resolution,
                    channels: self.embed_dim << i,
                    heads: self.num_heads[i],
                    window: if clipped { resolution } else { self.window_size },
                    shift: if clipped { 0 } else { self.window_size / 2 },
                }
            })
            .collect()
    }

    /// Channels of the final stage (width of `norm` and `head.fc`).
    pub fn num_features(&self) -> usize {
        self.embed_dim << (self.depths.len() - 1)
    }
}

impl LossConfig {
    /// Reads the `loss:` section; an absent section means the paper's defaults.
    pub fn from_yaml(section: Option<&Value>) -> Result<Self, ConfigError> {
        let mut cfg = Self::new();
        let mut s = Section::new(section, "loss")?;
        s.set("betas", &mut cfg.betas)?;
        s.set("contrastive_margin", &mut cfg.contrastive_margin)?;
        s.finish()?;
        Ok(cfg)
    }
}

/// The `model:` and `loss:` sections of a config file; other sections are left to their owners.
pub fn model_and_loss_from_yaml(doc: &Value) -> Result<(ModelConfig, LossConfig), ConfigError> {
    let mut root = Section::root(doc)?;
    let model: Value = root.required("model")?;
    let loss: Option<Value> = root.take("loss")?;
    Ok((
        ModelConfig::from_yaml(&model)?,
        LossConfig::from_yaml(loss.as_ref())?,
    ))
}

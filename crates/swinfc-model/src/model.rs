//! SwinFC (swinfc-model.md Fig. 1): the Swin backbone, three branches (projection → EACA → FFM →
//! head) on stages 2–4, and FSM on the last stage's attention.

use std::marker::PhantomData;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Int, Tensor, backend::Backend};

use crate::config::{ModelConfig, StageGeometry};
use crate::drop_path::DropMasks;
use crate::eaca::Eaca;
use crate::ffm::ffm;
use crate::fsm::{AttentionMap, pool_selected, select_tokens};
use crate::fused::{FusedOps, layer_norm as norm, mean_dim};
use crate::swin::{PatchEmbed, PatchMerging, SwinBlock, SwinStage, apply, layer_norm, linear};

/// One module per branch stage; the field names give `branch_proj.s2…`, `eaca.s4…` (§2.3).
#[derive(Module, Debug)]
pub struct PerStage<B: Backend, M: Module<B>> {
    pub s2: M,
    pub s3: M,
    pub s4: M,
    _backend: PhantomData<B>,
}

impl<B: Backend, M: Module<B>> PerStage<B, M> {
    fn build(mut make: impl FnMut(usize) -> M) -> Self {
        Self {
            s2: make(1),
            s3: make(2),
            s4: make(3),
            _backend: PhantomData,
        }
    }

    fn each(&self) -> [&M; 3] {
        [&self.s2, &self.s3, &self.s4]
    }
}

/// Branch entry (§1.2): LayerNorm(C_k) then Linear(C_k → D), so every stage has width D.
#[derive(Module, Debug)]
pub struct BranchProj<B: Backend> {
    pub norm: LayerNorm<B>,
    pub fc: Linear<B>,
}

/// Per-stage classifier (§1.5): LayerNorm(D) → mean over tokens → Linear(D → K).
#[derive(Module, Debug)]
pub struct BranchHead<B: Backend> {
    pub norm: LayerNorm<B>,
    pub fc: Linear<B>,
}

impl<B: FusedOps> BranchHead<B> {
    fn forward(&self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        apply(&self.fc, mean_tokens(norm(&self.norm, tokens)))
    }
}

/// timm's `head` (its pooling has no parameters): only `head.fc`.
#[derive(Module, Debug)]
pub struct ClassifierHead<B: Backend> {
    pub fc: Linear<B>,
}

#[derive(Module, Debug)]
pub struct SwinFc<B: Backend> {
    pub patch_embed: PatchEmbed<B>,
    pub layers: Vec<SwinStage<B>>,
    pub norm: LayerNorm<B>,
    pub head: ClassifierHead<B>,
    pub branch_proj: PerStage<B, BranchProj<B>>,
    pub eaca: PerStage<B, Eaca<B>>,
    pub branch_head: PerStage<B, BranchHead<B>>,
    /// Stage geometry after the clipping rule, for reshaping tokens to grids.
    stages: Vec<StageGeometry>,
    ffm_scale: f64,
}

/// What one forward pass produces: the four heads' logits and FSM's selection.
#[derive(Debug, Clone)]
pub struct SwinFcOutput<B: Backend> {
    /// z_swin [B, K]: the backbone's own head.
    pub logits_swin: Tensor<B, 2>,
    /// z_2, z_3, z_4 [B, K].
    pub logits_stages: [Tensor<B, 2>; 3],
    /// Ẑ [B, C₄]: used only by the contrastive loss.
    pub part_feature: Tensor<B, 2>,
    /// [B, blocks₄·heads₄] token positions chosen by FSM.
    pub fsm_indices: Tensor<B, 2, Int>,
}

impl<B: Backend> SwinFcOutput<B> {
    /// The prediction (§1.9): the sum of the four heads' raw logits.
    pub fn logits_combined(&self) -> Tensor<B, 2> {
        let [z2, z3, z4] = self.logits_stages.clone();
        self.logits_swin.clone() + z2 + z3 + z4
    }
}

impl ModelConfig {
    /// A freshly initialised model, reproducible from `seed` in any process: parameters are drawn
    /// in a fixed order right away (Burn draws lazily otherwise) and their ids are numbered in
    /// that order, so every replica has the same values *and* the same ParamIds.
    pub fn init<B: Backend>(&self, seed: u64, dev: &B::Device) -> SwinFc<B> {
        B::seed(dev, seed);
        let model = self.build::<B>(dev);
        model.visit(&mut Materialize);
        model.map(&mut NumberIds(0))
    }

    fn build<B: Backend>(&self, dev: &B::Device) -> SwinFc<B> {
        let stages = self.stages();
        let total_blocks: usize = self.depths.iter().sum();
        let rate = |i: usize| match total_blocks {
            1 => 0.0,
            n => self.drop_path * i as f64 / (n - 1) as f64,
        };
        let mut block_index = 0;
        let layers = stages
            .iter()
            .enumerate()
            .map(|(i, geom)| SwinStage {
                downsample: (i > 0).then(|| PatchMerging::new(stages[i - 1].channels, dev)),
                blocks: (0..self.depths[i])
                    .map(|j| {
                        let block = SwinBlock::new(
                            *geom,
                            j % 2 == 1,
                            self.mlp_ratio,
                            rate(block_index),
                            block_index,
                            dev,
                        );
                        block_index += 1;
                        block
                    })
                    .collect(),
            })
            .collect();
        let (d, k, c4) = (self.branch_dim, self.num_classes, self.num_features());
        SwinFc {
            patch_embed: PatchEmbed::new(self.patch_size, self.embed_dim, dev),
            layers,
            norm: layer_norm(c4, dev),
            head: ClassifierHead {
                fc: linear(c4, k, true, dev),
            },
            branch_proj: PerStage::build(|i| BranchProj {
                norm: layer_norm(stages[i].channels, dev),
                fc: linear(stages[i].channels, d, true, dev),
            }),
            eaca: PerStage::build(|_| Eaca::new(d, self.ea_memory, dev)),
            branch_head: PerStage::build(|_| BranchHead {
                norm: layer_norm(d, dev),
                fc: linear(d, k, true, dev),
            }),
            stages,
            ffm_scale: self.ffm_scale,
        }
    }
}

impl<B: FusedOps> SwinFc<B> {
    /// images [B, 3, H, W] → logits of every head and FSM's selection. `drop_key` enables
    /// stochastic depth for training (see [`crate::drop_path`]); `None` is evaluation.
    pub fn forward(&self, images: Tensor<B, 4>, drop_key: Option<u64>) -> SwinFcOutput<B> {
        let drop = drop_key.and_then(|key| {
            let rates: Vec<f64> = self
                .layers
                .iter()
                .flat_map(|l| &l.blocks)
                .map(|b| b.drop_rate())
                .collect();
            DropMasks::new(key, &rates, images.dims()[0], &images.device())
        });
        let mut x = self.patch_embed.forward(images); // [B, H/4, W/4, C]
        let mut taps = Vec::with_capacity(3); // stage 2–4 outputs, [B, N_k, C_k]
        let mut last_maps = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let (y, maps) = layer.forward(x, drop.as_ref());
            x = y;
            if i > 0 {
                taps.push(flatten_tokens(x.clone()));
            }
            last_maps = maps;
        }
        let tokens = norm(&self.norm, flatten_tokens(x)); // [B, N₄, C₄]
        let logits_swin = apply(&self.head.fc, mean_tokens(tokens.clone()));

        // Branches: project to width D, EACA, then FFM across stages, then per-stage heads.
        let branches: [Tensor<B, 3>; 3] = std::array::from_fn(|k| {
            let side = self.stages[k + 1].resolution;
            let proj = self.branch_proj.each()[k];
            let t = apply(&proj.fc, norm(&proj.norm, taps[k].clone())); // [B, N_k, D]
            self.eaca.each()[k].forward(t, side, side)
        });
        let fused = ffm(branches, self.ffm_scale);
        let heads = self.branch_head.each();
        let logits_stages = std::array::from_fn(|k| heads[k].forward(fused[k].clone()));

        let last = self.layers.len() - 1;
        let maps: Vec<_> = last_maps
            .into_iter()
            .zip(&self.layers[last].blocks)
            .map(|(attn, block)| AttentionMap {
                attn,
                shift: block.shift(),
            })
            .collect();
        let fsm_indices = select_tokens(&maps, self.stages[last]);
        let part_feature = pool_selected(tokens, fsm_indices.clone());
        SwinFcOutput {
            logits_swin,
            logits_stages,
            part_feature,
            fsm_indices,
        }
    }
}

/// [B, H, W, C] → [B, H·W, C] (raster order).
fn flatten_tokens<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, w, c] = x.dims();
    x.reshape([b, h * w, c])
}

/// [B, N, C] → [B, C].
fn mean_tokens<B: FusedOps>(x: Tensor<B, 3>) -> Tensor<B, 2> {
    let [b, _, c] = x.dims();
    mean_dim(x, 1).reshape([b, c])
}

/// Forces every lazily initialised parameter to draw its values now, in visit order.
struct Materialize;

impl<B: Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// Numbers ParamIds 1, 2, … in visit order (Burn draws them from entropy per process).
struct NumberIds(u64);

impl<B: Backend> ModuleMapper<B> for NumberIds {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (_, tensor, mapper) = param.consume();
        self.0 += 1;
        Param::from_mapped_value(ParamId::from(self.0), tensor, mapper)
    }
}

/// The two optimizer groups of §2.3, derived from a parameter's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamGroup {
    /// `patch_embed.*`, `layers.*`, `norm.*`: pretrained, `lr_backbone`.
    Backbone,
    /// `head.fc.*`, `branch_proj.*`, `eaca.*`, `branch_head.*`: new, `lr_new`.
    New,
}

impl ParamGroup {
    pub fn of(name: &str) -> Self {
        let root = name.split('.').next().unwrap_or_default();
        match root {
            "patch_embed" | "layers" | "norm" => Self::Backbone,
            _ => Self::New,
        }
    }
}

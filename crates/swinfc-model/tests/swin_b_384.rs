//! The full-size model of the paper (Swin-B at 384, 200 classes): every module's output shape
//! along one forward pass with batch 1, and the parameter count of spec §1.10.

use burn::backend::Flex;
use burn::module::Module;
use burn::tensor::{Distribution, Tensor};
use swinfc_model::ModelConfig;
use swinfc_model::ffm::ffm;
use swinfc_model::fsm::{AttentionMap, pool_selected, select_tokens};

type B = Flex;

fn swin_b() -> ModelConfig {
    ModelConfig::preset("swin_b_384").unwrap()
}

#[test]
fn parameter_count_matches_the_spec() {
    let params = swin_b().init::<B>(0, &Default::default()).num_params() as f64 / 1e6;
    assert!(
        (params - 109.21).abs() < 0.1,
        "{params:.3} M parameters, spec says 109.21 M"
    );
}

#[test]
fn module_shapes_along_one_forward() {
    let dev = Default::default();
    let cfg = swin_b();
    let model = cfg.init::<B>(0, &dev);
    let images = Tensor::<B, 4>::random([1, 3, 384, 384], Distribution::Normal(0.0, 1.0), &dev);

    let mut x = model.patch_embed.forward(images.clone());
    assert_eq!(x.dims(), [1, 96, 96, 128]);
    // (tokens H×W×C, attention [nW, heads, N, N]) per stage, from the spec's table.
    let expected = [
        ([1, 96, 96, 128], [64, 4, 144, 144]),
        ([1, 48, 48, 256], [16, 8, 144, 144]),
        ([1, 24, 24, 512], [4, 16, 144, 144]),
        ([1, 12, 12, 1024], [1, 32, 144, 144]),
    ];
    let mut taps = Vec::new();
    let mut last_maps = Vec::new();
    for (i, (layer, (tokens, attn))) in model.layers.iter().zip(expected).enumerate() {
        let (y, maps) = layer.forward(x, None);
        assert_eq!(y.dims(), tokens, "stage {}", i + 1);
        assert_eq!(maps.len(), cfg.depths[i]);
        assert!(maps.iter().all(|m| m.dims() == attn), "stage {} attention", i + 1);
        x = y;
        if i > 0 {
            taps.push(x.clone().reshape([1, tokens[1] * tokens[2], tokens[3]]));
        }
        last_maps = maps;
    }
    assert!(
        model.layers[3].blocks.iter().all(|b| b.shift() == 0),
        "stage 4 is one unshifted window"
    );

    let grids = [48, 24, 12];
    let proj = [
        &model.branch_proj.s2,
        &model.branch_proj.s3,
        &model.branch_proj.s4,
    ];
    let eaca = [&model.eaca.s2, &model.eaca.s3, &model.eaca.s4];
    let branches: [Tensor<B, 3>; 3] = std::array::from_fn(|k| {
        let t = proj[k].fc.forward(proj[k].norm.forward(taps[k].clone()));
        assert_eq!(
            t.dims(),
            [1, grids[k] * grids[k], 1024],
            "branch projection s{}",
            k + 2
        );
        let t = eaca[k].forward(t, grids[k], grids[k]);
        assert_eq!(t.dims(), [1, grids[k] * grids[k], 1024], "EACA s{}", k + 2);
        t
    });
    let fused = ffm(branches, 1.0);
    for (k, f) in fused.iter().enumerate() {
        assert_eq!(f.dims(), [1, grids[k] * grids[k], 1024], "FFM s{}", k + 2);
    }

    let tokens = model.norm.forward(x.reshape([1, 144, 1024]));
    let maps: Vec<_> = last_maps
        .into_iter()
        .map(|attn| AttentionMap { attn, shift: 0 })
        .collect();
    let indices = select_tokens(&maps, cfg.stages()[3]);
    assert_eq!(indices.dims(), [1, 64], "2 blocks × 32 heads");
    assert_eq!(pool_selected(tokens, indices).dims(), [1, 1024]);

    let out = model.forward(images, None);
    assert_eq!(out.logits_swin.dims(), [1, 200]);
    assert!(out.logits_stages.iter().all(|z| z.dims() == [1, 200]));
    assert_eq!(out.logits_combined().dims(), [1, 200]);
    assert_eq!(out.part_feature.dims(), [1, 1024]);
}

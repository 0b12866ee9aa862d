//! FSM's selection against a brute-force computation in plain loops, on random attention maps
//! with several windows and a shifted block.

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use swinfc_model::StageGeometry;
use swinfc_model::fsm::{AttentionMap, select_tokens};

type B = Flex;

#[test]
fn multi_window_selection_equals_brute_force() {
    let dev = Default::default();
    let (batch, res, w, heads, shift) = (2, 8, 4, 3, 2);
    let geom = StageGeometry {
        resolution: res,
        channels: 24,
        heads,
        window: w,
        shift,
    };
    let (nw, n) = ((res / w) * (res / w), w * w);
    B::seed(&dev, 7);
    let maps: Vec<AttentionMap<B>> = [0, shift]
        .into_iter()
        .map(|s| AttentionMap {
            attn: Tensor::<B, 4>::random([batch * nw, heads, n, n], Distribution::Uniform(0.0, 1.0), &dev),
            shift: s,
        })
        .collect();
    let got = select_tokens(&maps, geom)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap();

    let mut want = Vec::new();
    for b in 0..batch {
        for map in &maps {
            let a = map.attn.clone().into_data().to_vec::<f32>().unwrap();
            for h in 0..heads {
                // importance[y][x] of image position (y, x), from the window that covers it
                // in the rolled frame; rolled position r holds image position (r + s) mod res.
                let mut importance = vec![0.0f32; res * res];
                for wy in 0..res / w {
                    for wx in 0..res / w {
                        let win = b * nw + wy * (res / w) + wx;
                        for j in 0..n {
                            let col: f32 = (0..n)
                                .map(|i| a[((win * heads + h) * n + i) * n + j])
                                .sum::<f32>()
                                / n as f32;
                            let (ry, rx) = (wy * w + j / w, wx * w + j % w);
                            let (y, x) = ((ry + map.shift) % res, (rx + map.shift) % res);
                            importance[y * res + x] = col;
                        }
                    }
                }
                let best = (0..res * res).fold(
                    0,
                    |best, p| if importance[p] > importance[best] { p } else { best },
                );
                want.push(best as i64);
            }
        }
    }
    assert_eq!(got, want);
}

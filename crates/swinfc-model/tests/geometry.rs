//! Properties of the window machinery, checked against index formulas written independently of
//! the implementation (timm's code transcribed literally).

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use proptest::prelude::*;
use swinfc_model::swin::{
    relative_position_index, roll_back, roll_forward, shift_attention_mask, window_partition, window_reverse,
};

type B = Flex;

fn tensor(data: Vec<f32>, shape: [usize; 4]) -> Tensor<B, 4> {
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn partition_is_row_major_over_windows_and_reverse_inverts_it(
        b in 1usize..3, per_side in 1usize..4, w in 1usize..5, c in 1usize..4,
    ) {
        let side = per_side * w;
        let n = b * side * side * c;
        let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let x = tensor(data.clone(), [b, side, side, c]);
        let windows = window_partition(x, w);
        prop_assert_eq!(windows.dims(), [b * per_side * per_side, w * w, c]);
        let got = values(windows.clone());
        for bi in 0..b {
            for wy in 0..per_side {
                for wx in 0..per_side {
                    for p in 0..w * w {
                        for ci in 0..c {
                            let win = bi * per_side * per_side + wy * per_side + wx;
                            let (y, xx) = (wy * w + p / w, wx * w + p % w);
                            let want = data[((bi * side + y) * side + xx) * c + ci];
                            prop_assert_eq!(got[(win * w * w + p) * c + ci], want);
                        }
                    }
                }
            }
        }
        prop_assert_eq!(values(window_reverse(windows, w, side, side)), data);
    }

    #[test]
    fn roll_back_is_torch_roll_by_minus_s_and_roll_forward_inverts_it(
        h in 1usize..7, s in 0i64..7, c in 1usize..3,
    ) {
        let n = h * h * c;
        let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let rolled = values(roll_back(tensor(data.clone(), [1, h, h, c]), s));
        // torch.roll(x, -s)[i] = x[(i + s) mod h] on both spatial axes.
        for i in 0..h {
            for j in 0..h {
                for k in 0..c {
                    let (si, sj) = ((i + s as usize) % h, (j + s as usize) % h);
                    prop_assert_eq!(rolled[(i * h + j) * c + k], data[(si * h + sj) * c + k]);
                }
            }
        }
        let back = roll_forward(tensor(rolled, [1, h, h, c]), s);
        prop_assert_eq!(values(back), data);
    }

    #[test]
    fn relative_position_index_equals_timm_formula(w in 1usize..9) {
        // coords = stack(meshgrid(arange(w), arange(w), 'ij')).flatten(1)
        let coords: Vec<(i64, i64)> = (0..w * w).map(|p| ((p / w) as i64, (p % w) as i64)).collect();
        let mut want = Vec::new();
        for p in &coords {
            for q in &coords {
                // rel = coords[:, :, None] - coords[:, None, :]; shift; scale rows; sum
                let (mut r0, r1) = (p.0 - q.0 + w as i64 - 1, p.1 - q.1 + w as i64 - 1);
                r0 *= 2 * w as i64 - 1;
                want.push(r0 + r1);
            }
        }
        prop_assert_eq!(relative_position_index(w), want);
    }

    #[test]
    fn shift_mask_blocks_exactly_cross_region_pairs(per_side in 2usize..5, w in 2usize..6) {
        let res = per_side * w;
        let s = w / 2;
        // timm: img_mask[:, h0:h1, w0:w1] = cnt over slices (0,-w), (-w,-s), (-s,None).
        let bounds = [(0, res - w), (res - w, res - s), (res - s, res)];
        let mut img = vec![0.0f32; res * res];
        let mut cnt = 0.0;
        for (y0, y1) in bounds {
            for (x0, x1) in bounds {
                for y in y0..y1 {
                    for x in x0..x1 {
                        img[y * res + x] = cnt;
                    }
                }
                cnt += 1.0;
            }
        }
        let regions = values(window_partition(tensor(img, [1, res, res, 1]), w));
        let n = w * w;
        let mask = shift_attention_mask(res, w, s);
        prop_assert_eq!(mask.len(), per_side * per_side * n * n);
        for win in 0..per_side * per_side {
            for p in 0..n {
                for q in 0..n {
                    let cross = regions[win * n + p] != regions[win * n + q];
                    let m = mask[(win * n + p) * n + q];
                    prop_assert_eq!(m, if cross { -100.0 } else { 0.0 });
                }
            }
        }
    }
}

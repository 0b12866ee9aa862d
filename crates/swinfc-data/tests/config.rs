//! The `data:` section: defaults, and errors that name the dotted key.

use swinfc_data::{DataConfig, DatasetKind, WebfgSubset};

fn parse(yaml: &str) -> Result<DataConfig, String> {
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    DataConfig::from_yaml(&v).map_err(|e| e.to_string())
}

#[test]
fn defaults() {
    let c = parse("{dataset: cub, root: /data}").unwrap();
    assert_eq!(c.dataset, DatasetKind::Cub);
    assert_eq!((c.resize, c.crop, c.rotation_deg), (512, 384, 15.0));
    assert_eq!((c.num_threads, c.prefetch), (2, 4));
    assert!(c.synthetic.is_none());
    let s = parse("{dataset: synthetic, resize: 72, crop: 64}").unwrap();
    let syn = s.synthetic.unwrap();
    assert_eq!(syn.img_size, 72);
    let w = parse("{dataset: webfg, root: /d, subset: web-car}").unwrap();
    assert_eq!(w.subset, Some(WebfgSubset::WebCar));
}

#[test]
fn errors_name_the_dotted_key() {
    for (yaml, key) in [
        ("{dataset: cub, root: /d, colour: 1}", "data.colour:"),
        ("{dataset: imagenet, root: /d}", "data.dataset:"),
        ("{root: /d}", "data.dataset:"),
        ("{dataset: cub}", "data.root:"),
        ("{dataset: webfg, root: /d}", "data.subset:"),
        ("{dataset: webfg, root: /d, subset: web-dog}", "data.subset:"),
        ("{dataset: cub, root: /d, subset: web-car}", "data.subset:"),
        ("{dataset: cub, root: /d, crop: 600}", "data.crop:"),
        ("{dataset: cub, root: /d, resize: -3}", "data.resize:"),
        (
            "{dataset: cub, root: /d, rotation_deg: abc}",
            "data.rotation_deg:",
        ),
        ("{dataset: cub, root: /d, num_threads: 0}", "data.num_threads:"),
        ("{dataset: cub, root: /d, classes: 5}", "data.classes:"),
        ("{dataset: synthetic, classes: 1000}", "data.classes:"),
        ("{dataset: synthetic, seed: -1}", "data.seed:"),
        ("{dataset: synthetic, root: /d}", "data.root:"),
        ("[1, 2]", "data:"),
    ] {
        let e = parse(yaml).unwrap_err();
        assert!(e.starts_with(key), "{yaml}: {e}");
    }
}

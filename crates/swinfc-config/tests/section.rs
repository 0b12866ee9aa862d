//! The section reader's contract: every error names the dotted key, unknown keys are the ones
//! nobody took, and overrides land where their dotted key says.

use serde_yaml::Value;
use swinfc_config::{ConfigError, Section, apply_override, read_document};

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("test YAML parses")
}

#[test]
fn values_defaults_and_the_first_unknown_key_in_file_order() {
    let doc = yaml("{lr: 0.5, steps: 3, typo_b: 1, typo_a: 2}");
    let mut s = Section::new(Some(&doc), "train").unwrap();
    assert_eq!(s.required::<f64>("lr").unwrap(), 0.5);
    assert_eq!(s.get("steps", 9u64).unwrap(), 3);
    assert_eq!(s.get("absent", 7u64).unwrap(), 7);
    let mut preset = 1usize;
    s.set("also_absent", &mut preset).unwrap();
    assert_eq!(preset, 1);
    assert_eq!(
        s.finish().unwrap_err(),
        ConfigError::new("train.typo_b", "unknown key")
    );
}

#[test]
fn errors_name_the_dotted_key_and_what_was_given() {
    let doc = yaml("{n: 0, big: -3, name: 5, kind: cube, list: [1, x]}");
    let mut s = Section::new(Some(&doc), "data").unwrap();
    let e = s.positive("n", 1).unwrap_err();
    assert_eq!(e.to_string(), "data.n: expected a positive integer, got 0");
    let e = s.positive("big", 1).unwrap_err();
    assert_eq!(e.to_string(), "data.big: expected a positive integer, got -3");
    let e = s.required::<Vec<usize>>("list").unwrap_err();
    assert!(e.to_string().starts_with("data.list: "), "{e}");
    let e = s
        .choice("kind", &[("cub", 1), ("nabirds", 2), ("webfg", 3)])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "data.kind: expected cub, nabirds or webfg, got cube"
    );
    let e = s.required::<u32>("missing").unwrap_err();
    assert_eq!(e.to_string(), "data.missing: missing");
}

#[test]
fn section_shapes_are_checked_before_any_key() {
    assert!(Section::new(None, "eval").unwrap().finish().is_ok());
    assert!(Section::new(Some(&Value::Null), "eval").unwrap().finish().is_ok());
    let e = Section::new(Some(&yaml("[1, 2]")), "eval").unwrap_err();
    assert_eq!(e.key(), Some("eval"));
    let e = Section::new(Some(&yaml("{1: a}")), "eval").unwrap_err();
    assert_eq!(e.to_string(), "eval: keys are names, got 1");
    let e = Section::root(&yaml("- a")).unwrap_err();
    assert_eq!(e.key(), Some("<root>"));
}

#[test]
fn the_top_level_speaks_of_sections() {
    let doc = yaml("{model: {}, trian: {}}");
    let mut root = Section::root(&doc).unwrap();
    assert!(root.take::<Value>("model").unwrap().is_some());
    let e = root.required::<Value>("data").unwrap_err();
    assert_eq!(e.to_string(), "data: missing section");
    assert_eq!(root.finish().unwrap_err().to_string(), "trian: unknown section");
}

#[test]
fn overrides_set_dotted_keys_as_yaml_values() {
    let mut doc = yaml("{train: {lr: 1.0}, run: 3}");
    apply_override(&mut doc, "train.lr=0.25").unwrap();
    apply_override(&mut doc, "train.sched.kind=cosine").unwrap();
    apply_override(&mut doc, "run.name=x").unwrap();
    assert_eq!(
        doc,
        yaml("{train: {lr: 0.25, sched: {kind: cosine}}, run: {name: x}}")
    );
    for bad in ["train.lr", "=1", "train..lr=1", "train.lr=[1"] {
        assert!(apply_override(&mut doc, bad).is_err(), "{bad}");
    }
}

#[test]
fn a_document_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.yaml");
    let e = read_document(&missing, &[]).unwrap_err();
    assert!(
        matches!(&e, ConfigError::File { path, .. } if *path == missing),
        "{e}"
    );
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "train: {lr: [1\n").unwrap();
    let e = read_document(&broken, &[]).unwrap_err();
    assert!(
        matches!(&e, ConfigError::File { path, .. } if *path == broken),
        "{e}"
    );
    assert!(e.to_string().contains("line 2"), "{e}");
    let ok = dir.path().join("ok.yaml");
    std::fs::write(&ok, "train: {lr: 1}\n").unwrap();
    let doc = read_document(&ok, &["train.lr=2".to_string()]).unwrap();
    assert_eq!(doc, yaml("{train: {lr: 2}}"));
}

//! The run config's error and the reader of one YAML section, shared by the crates that own a
//! section (`model:`/`loss:` in swinfc-model, `data:` in swinfc-data, the rest in swinfc-train),
//! so every config error reads the same way: `PATH: what is wrong`, with PATH the dotted key the
//! user has to edit (`data.num_threads`), and unknown keys are found the same way everywhere.
//!
//! Owns: [`ConfigError`], [`Section`], reading a config file into a YAML document and `--set`
//! overrides. Must not: know any section's keys or defaults, or depend on another swinfc crate.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

/// What is wrong with a config: its file, or the value at a dotted key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or is not YAML (serde_yaml's message gives the line).
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// The value at `key` (`model.window_size`, `<root>` for the document) is wrong, missing or
    /// unknown.
    #[error("{key}: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    /// An error about the value at the dotted `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The dotted key the error is about; `None` for the file itself.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::File { .. } => None,
            ConfigError::Key { key, .. } => Some(key),
        }
    }
}

/// Reads the YAML document at `path` and applies `overrides` (`train.lr_new=0.01`; values are
/// YAML). Errors name the file, or the override.
pub fn read_document(path: &Path, overrides: &[String]) -> Result<Value, ConfigError> {
    let file_error = |message: String| ConfigError::File {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    let mut doc: Value = serde_yaml::from_str(&text).map_err(|e| file_error(e.to_string()))?;
    for item in overrides {
        apply_override(&mut doc, item)?;
    }
    Ok(doc)
}

/// `a.b.c=value`: sets that key (creating mappings on the way); the value is parsed as YAML.
pub fn apply_override(doc: &mut Value, item: &str) -> Result<(), ConfigError> {
    let (path, raw) = item
        .split_once('=')
        .ok_or_else(|| ConfigError::new(item, "--set takes key=value"))?;
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(ConfigError::new(
            item,
            "--set needs a dotted key such as train.lr_new",
        ));
    }
    let value: Value = serde_yaml::from_str(raw).map_err(|e| ConfigError::new(path, e.to_string()))?;
    let mut node = doc;
    for key in path.split('.') {
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let map = node.as_mapping_mut().expect("made a mapping above");
        node = map.entry(Value::String(key.to_string())).or_insert(Value::Null);
    }
    *node = value;
    Ok(())
}

/// One section's keys, taken one by one: what is left at [`Section::finish`] is exactly the
/// keys nobody asked for, which are reported as unknown (the first in file order).
#[derive(Debug)]
pub struct Section {
    path: String,
    map: Mapping,
}

impl Section {
    /// The document's top level, whose keys are the sections.
    pub fn root(doc: &Value) -> Result<Self, ConfigError> {
        Self::new(Some(doc), "")
    }

    /// The mapping at `path`; an absent or empty (`null`) section has no keys, so every value
    /// takes its default.
    pub fn new(value: Option<&Value>, path: impl Into<String>) -> Result<Self, ConfigError> {
        let path = path.into();
        let map = match value {
            None | Some(Value::Null) => Mapping::new(),
            Some(Value::Mapping(m)) => m.clone(),
            Some(other) => {
                return Err(ConfigError::new(
                    label(&path),
                    format!("expected a mapping of keys, got {}", show(other)),
                ));
            }
        };
        if let Some(key) = map.keys().find(|k| !k.is_string()) {
            return Err(ConfigError::new(
                label(&path),
                format!("keys are names, got {}", show(key)),
            ));
        }
        Ok(Self { path, map })
    }

    /// The dotted path of `key` in this section.
    pub fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// An error about `key` of this section.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.path_of(key), message)
    }

    /// Whether `key` is present and not yet taken.
    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// The keys present and not yet taken, in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().filter_map(Value::as_str)
    }

    /// Removes `key` and deserialises its value, if present.
    pub fn take<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, ConfigError> {
        match self.map.shift_remove(key) {
            None => Ok(None),
            Some(value) => serde_yaml::from_value(value)
                .map(Some)
                .map_err(|e| self.error(key, e.to_string())),
        }
    }

    /// The value of `key`, or `default` when absent.
    pub fn get<T: DeserializeOwned>(&mut self, key: &str, default: T) -> Result<T, ConfigError> {
        Ok(self.take(key)?.unwrap_or(default))
    }

    /// The value of `key`, which must be present.
    pub fn required<T: DeserializeOwned>(&mut self, key: &str) -> Result<T, ConfigError> {
        let missing = if self.path.is_empty() {
            "missing section"
        } else {
            "missing"
        };
        self.take(key)?.ok_or_else(|| self.error(key, missing))
    }

    /// Overwrites `target` with the value of `key` when present (a preset's value otherwise).
    pub fn set<T: DeserializeOwned>(&mut self, key: &str, target: &mut T) -> Result<(), ConfigError> {
        if let Some(value) = self.take(key)? {
            *target = value;
        }
        Ok(())
    }

    /// An integer ≥ 1, or `default` when absent.
    pub fn positive(&mut self, key: &str, default: usize) -> Result<usize, ConfigError> {
        match self.map.shift_remove(key) {
            None => Ok(default),
            Some(value) => match value.as_u64().map(usize::try_from) {
                Some(Ok(n)) if n > 0 => Ok(n),
                Some(Err(_)) => Err(self.error(key, format!("{} is too large", show(&value)))),
                _ => Err(self.error(key, format!("expected a positive integer, got {}", show(&value)))),
            },
        }
    }

    /// One of the named `options`, if present; anything else is an error listing them.
    pub fn choice<T: Copy>(&mut self, key: &str, options: &[(&str, T)]) -> Result<Option<T>, ConfigError> {
        let Some(value) = self.map.shift_remove(key) else {
            return Ok(None);
        };
        options
            .iter()
            .find(|(name, _)| value.as_str() == Some(name))
            .map(|&(_, option)| Some(option))
            .ok_or_else(|| {
                let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
                self.error(key, format!("expected {}, got {}", one_of(&names), show(&value)))
            })
    }

    /// Ends the section: any key left is unknown.
    pub fn finish(self) -> Result<(), ConfigError> {
        let unknown = if self.path.is_empty() {
            "unknown section"
        } else {
            "unknown key"
        };
        match self.keys().next() {
            Some(key) => Err(self.error(key, unknown)),
            None => Ok(()),
        }
    }
}

/// How errors about a whole section name it; the top level has no key of its own.
fn label(path: &str) -> &str {
    if path.is_empty() { "<root>" } else { path }
}

/// A value as the user wrote it, for error messages.
pub fn show(value: &Value) -> String {
    serde_yaml::to_string(value)
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| format!("{value:?}"))
}

/// `a`, `a or b`, `a, b or c`.
pub fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

//! Reading agent manifests from a file, a folder or standard input, and comparing one
//! with what the server holds.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// One document of one file.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it came from: `path` or `path#2` for the second document of a file.
    pub origin: String,
    pub name: String,
    pub body: Value,
}

/// A file or document that could not be read as a manifest.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub origin: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Loaded {
    pub manifests: Vec<Manifest>,
    pub unreadable: Vec<Unreadable>,
}

const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Every manifest under `paths`, in a stable order (folders walked in name order).
pub fn load(paths: &[PathBuf]) -> Loaded {
    let mut loaded = Loaded::default();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            match std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
                Ok(_) => parse_into(&mut loaded, "-", &text, false),
                Err(err) => loaded.unreadable.push(Unreadable { origin: "-".into(), reason: format!("cannot read standard input: {err}") }),
            }
            continue;
        }
        let mut files = Vec::new();
        if let Err(reason) = collect(path, true, &mut files) {
            loaded.unreadable.push(Unreadable { origin: path.display().to_string(), reason });
            continue;
        }
        if files.is_empty() {
            loaded.unreadable.push(Unreadable { origin: path.display().to_string(), reason: "no *.yaml, *.yml or *.json file in it".into() });
        }
        for file in files {
            let origin = file.display().to_string();
            match std::fs::read_to_string(&file) {
                Ok(text) => parse_into(&mut loaded, &origin, &text, file.extension().is_some_and(|ext| ext == "json")),
                Err(err) => loaded.unreadable.push(Unreadable { origin, reason: format!("cannot read it: {err}") }),
            }
        }
    }
    let mut seen = std::collections::HashMap::new();
    let mut manifests = Vec::new();
    for manifest in std::mem::take(&mut loaded.manifests) {
        if let Some(first) = seen.get(&manifest.name) {
            loaded
                .unreadable
                .push(Unreadable { origin: manifest.origin.clone(), reason: format!("agent {} is also defined in {first}: each agent once", manifest.name) });
        } else {
            seen.insert(manifest.name.clone(), manifest.origin.clone());
            manifests.push(manifest);
        }
    }
    loaded.manifests = manifests;
    loaded
}

fn collect(path: &Path, named: bool, files: &mut Vec<PathBuf>) -> Result<(), String> {
    let metadata = std::fs::metadata(path).map_err(|err| format!("cannot read it: {err}"))?;
    if metadata.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|err| format!("cannot list it: {err}"))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|entry| !entry.file_name().is_some_and(|name| name.to_string_lossy().starts_with('.')))
            .collect();
        entries.sort();
        for entry in entries {
            collect(&entry, false, files)?;
        }
    } else if named || path.extension().and_then(|ext| ext.to_str()).is_some_and(|ext| EXTENSIONS.contains(&ext)) {
        // A file named on the command line is read whatever its name.
        files.push(path.to_path_buf());
    }
    Ok(())
}

fn parse_into(loaded: &mut Loaded, origin: &str, text: &str, json: bool) {
    let documents: Vec<Result<Value, String>> = if json {
        vec![serde_json::from_str::<Value>(text).map_err(|err| format!("not valid JSON: {err}"))]
    } else {
        let mut documents = Vec::new();
        for document in serde_yaml::Deserializer::from_str(text) {
            let document = serde::Deserialize::deserialize(document).map_err(|err: serde_yaml::Error| format!("not valid YAML: {err}"));
            let failed = document.is_err();
            documents.push(document);
            if failed {
                // A YAML stream cannot be read past a syntax error (its reader would
                // repeat the error for ever).
                break;
            }
        }
        documents
    };
    let several = documents.len() > 1;
    for (index, document) in documents.into_iter().enumerate() {
        let origin = if several { format!("{origin}#{}", index + 1) } else { origin.to_owned() };
        match document {
            Ok(Value::Null) => {}
            Ok(body) => match body.pointer("/metadata/name").and_then(Value::as_str) {
                Some(name) if !name.is_empty() => loaded.manifests.push(Manifest { origin, name: name.to_owned(), body }),
                _ => loaded.unreadable.push(Unreadable { origin, reason: "metadata.name: a manifest names its agent".into() }),
            },
            Err(reason) => loaded.unreadable.push(Unreadable { origin, reason }),
        }
    }
}

/// A manifest as compared: `metadata.namespace` is the server's to set, so it is left out.
pub fn comparable(manifest: &Value) -> Value {
    let mut manifest = manifest.clone();
    if let Some(metadata) = manifest.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("namespace");
    }
    manifest
}

/// Whether the manifest in PATH differs from the one the server holds.
pub fn differs(local: &Value, stored: &Value) -> bool {
    comparable(local) != comparable(stored)
}

/// A unified diff of the two manifests as YAML, `server` first.
pub fn diff(name: &str, stored: Option<&Value>, local: &Value) -> String {
    let render = |value: &Value| serde_yaml::to_string(&comparable(value)).unwrap_or_default();
    let old = stored.map(render).unwrap_or_default();
    let new = render(local);
    similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("agent/{name} (server)"), &format!("agent/{name} (PATH)"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_documents_and_names() {
        let mut loaded = Loaded::default();
        parse_into(&mut loaded, "a.yaml", "metadata: {name: one}\n---\nmetadata: {name: two}\n---\n", false);
        assert_eq!(loaded.manifests.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["one", "two"]);
        assert_eq!(loaded.manifests[1].origin, "a.yaml#2");
        parse_into(&mut loaded, "b.yaml", "kind: Agent\n", false);
        assert_eq!(loaded.unreadable.len(), 1);
        parse_into(&mut loaded, "c.yaml", "metadata: [unclosed\n---\nmetadata: {name: three}\n", false);
        assert_eq!(loaded.unreadable.len(), 2);
        assert!(loaded.unreadable[0].reason.starts_with("metadata.name"));
    }

    #[test]
    fn the_namespace_is_not_compared() {
        let local: Value = serde_json::json!({"metadata": {"name": "a"}, "spec": {"x": 1}});
        let stored: Value = serde_json::json!({"metadata": {"name": "a", "namespace": "tenant-1"}, "spec": {"x": 1}});
        assert!(!differs(&local, &stored));
        let changed: Value = serde_json::json!({"metadata": {"name": "a"}, "spec": {"x": 2}});
        assert!(differs(&changed, &stored));
        let text = diff("a", Some(&stored), &changed);
        assert!(text.contains("-  x: 1") && text.contains("+  x: 2"), "{text}");
    }
}

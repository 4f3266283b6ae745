//! The Helm chart's ward-specific content: every policy it can ship compiles exactly as `ward check`
//! would, and its alerts and dashboard query only metrics ward exports (or the ones named in the
//! deployment issue that other work is adding under exactly these names).

use std::collections::BTreeSet;
use std::path::Path;

const CHART: &str = "helm/ward";

/// Metrics the chart watches that land with work in flight (security events, upstream breakers).
const COMING: &[&str] = &["ward_security_events_total", "ward_upstream_breaker_state"];

#[test]
fn the_charts_built_in_policies_compile() {
    let dir = Path::new(CHART).join("files/policies");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        ward::policy::load(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        n += 1;
    }
    assert!(n >= 2, "{n} built-in policies");
}

#[test]
fn policies_in_the_shipped_values_files_compile() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(Path::new(CHART).join("ci")).unwrap() {
        let path = e.unwrap().path();
        let values: serde_norway::Value =
            serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let Some(files) = values
            .get("policy")
            .and_then(|p| p.get("files"))
            .and_then(|f| f.as_mapping())
        else {
            continue;
        };
        // The ConfigMap becomes one directory; ward reads it as a whole.
        let dir = tmp.path().join(path.file_stem().unwrap());
        std::fs::create_dir(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name.as_str().unwrap()), text.as_str().unwrap()).unwrap();
        }
        ward::policy::load(&dir).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        n += 1;
    }
    assert!(n >= 1, "no values file carries a policy");
}

fn metric_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bward_[a-z0-9_]+").unwrap();
    re.find_iter(text)
        .map(|m| {
            // a histogram's series carry its name plus a suffix
            let name = m.as_str();
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

fn source_text(dir: &Path, out: &mut String) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            source_text(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn alerts_and_dashboard_query_only_metrics_ward_exports() {
    let mut src = String::new();
    source_text(Path::new("src"), &mut src);
    for file in ["files/alerts.yaml", "files/dashboard.json"] {
        let text = std::fs::read_to_string(Path::new(CHART).join(file)).unwrap();
        let names = metric_names(&text);
        assert!(names.len() >= 8, "{file}: {names:?}");
        for name in names {
            assert!(
                src.contains(&format!("\"{name}\"")) || COMING.contains(&name.as_str()),
                "{file} queries {name}, which ward does not export"
            );
        }
    }
}

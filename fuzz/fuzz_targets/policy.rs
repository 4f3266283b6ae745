//! The policy parser and compiler (`ward::policy::compile::compile_sources`) on arbitrary text.
//!
//! It must never panic, whatever the YAML; it must give the same verdict twice (compilation is a
//! pure function of the sources and the files they name); every error names the file it is about
//! and says something; an accepted policy's hash is the hash of its sources.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward::policy::compile::{compile_sources, LoadError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = &ward_fuzz::fixture().dir;
    // Two files when the input holds a form feed: rules from several files merge.
    let sources: Vec<_> = text
        .splitn(2, '\x0c')
        .enumerate()
        .map(|(i, t)| (dir.join(format!("p{i}.yaml")), t.to_owned()))
        .collect();
    let first = compile_sources(&sources);
    let again = compile_sources(&sources);
    match (&first, &again) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.hash, b.hash);
            assert_eq!(a.inputs, b.inputs);
            assert_eq!(a.routes.len(), b.routes.len());
            assert!(!a.hash.is_empty());
            let _ = ward::policy::explain(a, &http::Method::POST, Some("localhost"), "/v1/payments");
        }
        (Err(LoadError::Invalid(a)), Err(LoadError::Invalid(b))) => {
            let a: Vec<String> = a.iter().map(ToString::to_string).collect();
            let b: Vec<String> = b.iter().map(ToString::to_string).collect();
            assert_eq!(a, b, "the same sources gave different errors");
            assert!(!a.is_empty(), "an error list with no error");
            for e in first.as_ref().err().into_iter().flat_map(|e| match e {
                LoadError::Invalid(v) => v.iter(),
                _ => [].iter(),
            }) {
                assert!(!e.message.is_empty(), "an error without a message: {e:?}");
                assert!(
                    sources.iter().any(|(f, _)| *f == e.file)
                        || e.file.starts_with(dir)
                        || e.file.as_os_str().is_empty(),
                    "an error about a file that is not an input: {e:?}"
                );
            }
        }
        (a, b) => panic!("two compilations disagree: {:?} / {:?}", a.is_ok(), b.is_ok()),
    }
});

//! What the config tests share: the errors of a rejected file, and the
//! checks that name every missing one at once.

/// The errors of `text`, which must be rejected.
pub fn rejected(text: &str) -> Vec<String> {
    match crate::parse(text) {
        Ok(_) => panic!("config should be rejected:\n{text}"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

/// Each of `wants` begins one of `errs`.
pub fn assert_has(errs: &[String], wants: &[&str]) {
    for want in wants {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errs:#?}"
        );
    }
}

/// [`assert_has`], and nothing else: one error per want.
pub fn assert_exactly(errs: &[String], wants: &[&str]) {
    assert_has(errs, wants);
    assert_eq!(errs.len(), wants.len(), "{errs:#?}");
}

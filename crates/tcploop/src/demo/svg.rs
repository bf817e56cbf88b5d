//! The loop as an SVG ladder diagram (not written yet).

use super::story::Loop;

/// The SVG document.
pub fn render(_l: &Loop) -> String {
    String::new()
}

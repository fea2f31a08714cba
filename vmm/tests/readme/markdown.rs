//! Just enough Markdown for the docs test: fenced blocks, prose paragraphs, inline code spans,
//! links and heading anchors, each with the line it is on.

use std::collections::HashSet;

/// A fenced code block.
pub struct Block<'a> {
    /// The fence's language (`sh`, `console`, `text`, ...).
    pub lang: &'a str,
    /// The line of the opening fence; the block's lines follow it.
    pub line: usize,
    pub lines: Vec<&'a str>,
    /// The last prose line before the block.
    pub intro: &'a str,
}

/// The fenced blocks of `text`, or the line of a fence that is never closed.
pub fn blocks(text: &str) -> Result<Vec<Block<'_>>, usize> {
    let (mut blocks, mut open, mut intro) = (Vec::new(), None::<Block>, "");
    for (n, line) in text.lines().enumerate() {
        match (open.as_mut(), line.strip_prefix("```")) {
            (None, Some(lang)) => {
                let (lang, line) = (lang.trim(), n + 1);
                let lines = Vec::new();
                open = Some(Block {
                    lang,
                    line,
                    lines,
                    intro,
                })
            }
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some(block), None) => block.lines.push(line),
            (None, None) if !line.trim().is_empty() => intro = line,
            (None, None) => {}
        }
    }
    match open {
        Some(block) => Err(block.line),
        None => Ok(blocks),
    }
}

/// Lines of prose (outside fenced blocks) up to a blank line, joined by spaces, so that code
/// spans and links may wrap.
struct Paragraph {
    text: String,
    /// `(offset in text, line)` of each line.
    starts: Vec<(usize, usize)>,
}

impl Paragraph {
    fn line_at(&self, offset: usize) -> usize {
        let before = self.starts.iter().take_while(|(start, _)| *start <= offset);
        before.last().map_or(0, |(_, line)| *line)
    }
}

fn paragraphs(text: &str) -> Vec<Paragraph> {
    let (mut paragraphs, mut fenced) = (Vec::new(), false);
    let mut current: Option<Paragraph> = None;
    for (n, line) in text.lines().enumerate() {
        let fence = line.starts_with("```");
        fenced ^= fence;
        if fenced || fence || line.trim().is_empty() {
            paragraphs.extend(current.take());
            continue;
        }
        let paragraph = current.get_or_insert_with(|| Paragraph {
            text: String::new(),
            starts: Vec::new(),
        });
        paragraph.starts.push((paragraph.text.len(), n + 1));
        paragraph.text.push_str(line.trim());
        paragraph.text.push(' ');
    }
    paragraphs.extend(current);
    paragraphs
}

/// The inline code spans of the prose, with their lines, or the line of a paragraph whose
/// backquotes do not pair up.
pub fn code_spans(text: &str) -> Result<Vec<(usize, String)>, usize> {
    let mut spans = Vec::new();
    for paragraph in paragraphs(text) {
        if paragraph.text.matches('`').count() % 2 != 0 {
            return Err(paragraph.line_at(0));
        }
        let mut offset = 0;
        for (i, part) in paragraph.text.split('`').enumerate() {
            if i % 2 == 1 {
                spans.push((paragraph.line_at(offset), part.to_string()));
            }
            offset += part.len() + 1;
        }
    }
    Ok(spans)
}

/// The targets of the prose's links (`[text](target)`), with their lines.
pub fn links(text: &str) -> Vec<(usize, String)> {
    let mut links = Vec::new();
    for paragraph in paragraphs(text) {
        for (offset, _) in paragraph.text.match_indices("](") {
            let rest = &paragraph.text[offset + 2..];
            let target = rest.split(')').next().unwrap_or_default();
            links.push((paragraph.line_at(offset), target.to_string()));
        }
    }
    links
}

/// The anchors GitHub gives the headings: lower case, punctuation dropped, spaces as dashes.
pub fn anchors(text: &str) -> HashSet<String> {
    let mut fenced = false;
    let mut anchors = HashSet::new();
    for line in text.lines() {
        fenced ^= line.starts_with("```");
        let level = line.chars().take_while(|&c| c == '#').count();
        if !fenced && level > 0 && line[level..].starts_with(' ') {
            let kept = line[level..]
                .trim()
                .chars()
                .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'));
            anchors.insert(kept.collect::<String>().to_lowercase().replace(' ', "-"));
        }
    }
    anchors
}

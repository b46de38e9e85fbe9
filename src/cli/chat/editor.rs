//! The terminal side of `socklab chat`: raw mode for as long as a guard lives, and the small
//! line editor that keeps the typed line on the bottom row while incoming lines print above.

use std::io::{self, Write};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use crossterm::{cursor, queue, style, terminal};

use super::{ChatError, Output, PROMPT, Typed};

/// Raw mode for as long as it lives: dropping it (panics included) restores the terminal.
#[derive(Debug)]
pub struct RawMode(());

impl RawMode {
    /// Puts the terminal in raw mode.
    pub fn enable() -> Result<RawMode, ChatError> {
        terminal::enable_raw_mode().map_err(ChatError::Terminal)?;
        // A panic message is printed before the guard is dropped: leave raw mode first, so the
        // message is readable (disabling twice is harmless).
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = terminal::disable_raw_mode();
            previous(info);
        }));
        Ok(RawMode(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = terminal::disable_raw_mode();
    }
}

/// The line editor: the prompt and the line being typed on the bottom line, incoming lines
/// printed above it.
pub(super) struct Editor<W: Write> {
    out: W,
    /// The line being typed.
    line: Vec<char>,
    /// Where the next character goes, in characters from the start of `line`.
    cursor: usize,
}

impl<W: Write> Editor<W> {
    pub(super) fn new(out: W) -> Self {
        Editor {
            out,
            line: Vec::new(),
            cursor: 0,
        }
    }

    /// Draws the prompt and as much of the line as fits (scrolled to keep the cursor in view),
    /// then puts the cursor where it belongs.
    fn draw_prompt(&mut self) -> io::Result<()> {
        let width = terminal::size().map_or(80, |(w, _)| usize::from(w));
        let prompt_len = PROMPT.chars().count();
        let room = width.saturating_sub(prompt_len).saturating_sub(1).max(1);
        let start = self.cursor.saturating_sub(room);
        let end = self.line.len().min(start.saturating_add(room));
        let shown: String = self
            .line
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .collect();
        let column = prompt_len.saturating_add(self.cursor.saturating_sub(start));
        queue!(
            self.out,
            cursor::MoveToColumn(0),
            terminal::Clear(terminal::ClearType::CurrentLine),
            style::Print(PROMPT),
            style::Print(shown),
            cursor::MoveToColumn(u16::try_from(column).unwrap_or(u16::MAX)),
        )?;
        self.out.flush()
    }

    /// Clears the prompt line, prints `text` there and draws the prompt again below it.
    fn print_above(&mut self, text: &str) -> Result<(), ChatError> {
        let draw = |e: &mut Self| -> io::Result<()> {
            queue!(
                e.out,
                cursor::MoveToColumn(0),
                terminal::Clear(terminal::ClearType::CurrentLine),
            )?;
            for part in text.split('\n') {
                queue!(e.out, style::Print(part), style::Print("\r\n"))?;
            }
            e.draw_prompt()
        };
        draw(self).map_err(ChatError::Stdout)
    }

    fn insert(&mut self, c: char) {
        let at = self.cursor.min(self.line.len());
        self.line.insert(at, c);
        self.cursor = at.saturating_add(1);
    }

    fn backspace(&mut self) {
        if self.cursor > 0 && self.cursor <= self.line.len() {
            self.cursor -= 1;
            self.line.remove(self.cursor);
        }
    }

    fn delete(&mut self) {
        if self.cursor < self.line.len() {
            self.line.remove(self.cursor);
        }
    }

    /// Ctrl-W: deletes the word before the cursor (and the blanks after it).
    fn delete_word(&mut self) {
        let mut at = self.cursor.min(self.line.len());
        while at > 0 && self.line.get(at - 1).is_some_and(|c| c.is_whitespace()) {
            at -= 1;
        }
        while at > 0 && self.line.get(at - 1).is_some_and(|c| !c.is_whitespace()) {
            at -= 1;
        }
        self.line.drain(at..self.cursor.min(self.line.len()));
        self.cursor = at;
    }

    /// Applies one key press to the line.
    fn apply(&mut self, key: KeyEvent) -> Typed {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c') if ctrl => return Typed::Quit,
            KeyCode::Char('d') if ctrl => {
                if self.line.is_empty() {
                    return Typed::Quit;
                }
                self.delete();
            }
            KeyCode::Char('a') if ctrl => self.cursor = 0,
            KeyCode::Char('e') if ctrl => self.cursor = self.line.len(),
            KeyCode::Char('u') if ctrl => {
                self.line.drain(..self.cursor.min(self.line.len()));
                self.cursor = 0;
            }
            KeyCode::Char('k') if ctrl => self.line.truncate(self.cursor),
            KeyCode::Char('w') if ctrl => self.delete_word(),
            KeyCode::Char('h') if ctrl => self.backspace(),
            KeyCode::Char('j' | 'm') if ctrl => return self.take_line(),
            KeyCode::Char(_) if ctrl => {}
            KeyCode::Char(c) => self.insert(c),
            KeyCode::Tab => self.insert('\t'),
            KeyCode::Enter => return self.take_line(),
            KeyCode::Backspace => self.backspace(),
            KeyCode::Delete => self.delete(),
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = self.cursor.saturating_add(1).min(self.line.len()),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = self.line.len(),
            _ => {}
        }
        Typed::Nothing
    }

    fn take_line(&mut self) -> Typed {
        self.cursor = 0;
        Typed::Line(std::mem::take(&mut self.line).into_iter().collect())
    }
}

/// Replaces control characters (an escape sequence from another member could move the cursor
/// or worse) with U+FFFD; tabs stay.
fn printable(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

impl<W: Write> Output for Editor<W> {
    fn incoming(&mut self, line: &[u8]) -> Result<(), ChatError> {
        let text = printable(line);
        self.print_above(&text)
    }

    fn notice(&mut self, text: &str) -> Result<(), ChatError> {
        self.print_above(text)
    }

    fn key(&mut self, key: KeyEvent) -> Result<Typed, ChatError> {
        let typed = self.apply(key);
        match &typed {
            // Keep what was sent in the scrollback, above a fresh prompt.
            Typed::Line(line) if !line.is_empty() => {
                let shown = format!("{PROMPT}{}", printable(line.as_bytes()));
                self.print_above(&shown)?;
            }
            _ => self.draw_prompt().map_err(ChatError::Stdout)?,
        }
        Ok(typed)
    }

    fn redraw(&mut self) -> Result<(), ChatError> {
        self.draw_prompt().map_err(ChatError::Stdout)
    }

    fn finish(&mut self) -> Result<(), ChatError> {
        // Leave the cursor at the start of a clean line for the shell.
        queue!(
            self.out,
            cursor::MoveToColumn(0),
            terminal::Clear(terminal::ClearType::CurrentLine),
        )
        .map_err(ChatError::Stdout)?;
        self.out.flush().map_err(ChatError::Stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(e: &mut Editor<Vec<u8>>, code: KeyCode, modifiers: KeyModifiers) -> Typed {
        e.apply(KeyEvent::new(code, modifiers))
    }

    fn typed(e: &mut Editor<Vec<u8>>, s: &str) {
        for c in s.chars() {
            press(e, KeyCode::Char(c), KeyModifiers::NONE);
        }
    }

    #[test]
    fn editing_keys() {
        let mut e = Editor::new(Vec::new());
        typed(&mut e, "hello wrld");
        for _ in 0..3 {
            press(&mut e, KeyCode::Left, KeyModifiers::NONE);
        }
        typed(&mut e, "o");
        press(&mut e, KeyCode::End, KeyModifiers::NONE);
        press(&mut e, KeyCode::Backspace, KeyModifiers::NONE);
        typed(&mut e, "d!");
        assert_eq!(
            press(&mut e, KeyCode::Enter, KeyModifiers::NONE),
            Typed::Line("hello world!".into())
        );
        assert!(e.line.is_empty());

        typed(&mut e, "one two  ");
        press(&mut e, KeyCode::Char('w'), KeyModifiers::CONTROL);
        assert_eq!(e.line.iter().collect::<String>(), "one ");
        press(&mut e, KeyCode::Char('u'), KeyModifiers::CONTROL);
        assert!(e.line.is_empty());
        assert_eq!(
            press(&mut e, KeyCode::Char('d'), KeyModifiers::CONTROL),
            Typed::Quit
        );
        typed(&mut e, "x");
        assert_eq!(
            press(&mut e, KeyCode::Char('c'), KeyModifiers::CONTROL),
            Typed::Quit
        );
    }

    #[test]
    fn control_characters_are_not_printed() {
        assert_eq!(printable(b"a\x1b[2Jb\tc\xff"), "a\u{fffd}[2Jb\tc\u{fffd}");
    }
}

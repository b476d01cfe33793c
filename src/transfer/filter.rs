//! Dropping whole lines from a SQL stream without holding the stream: only a line short enough
//! to be one of the dropped ones is held until its end; any longer line (a COPY row of any
//! size) passes through as it arrives. Memory stays bounded.

/// Lines longer than this are never dropped, and never held.
const HOLD_MAX: usize = 1024;

/// A streaming filter of lines for which `drop` says true.
pub struct LineFilter {
    drop: Box<dyn Fn(&str) -> bool>,
    held: Vec<u8>,
    passing: bool,
    dropped: usize,
}

impl LineFilter {
    /// `drop` sees each short line without its newline.
    pub fn new(drop: impl Fn(&str) -> bool + 'static) -> Self {
        Self {
            drop: Box::new(drop),
            held: Vec::new(),
            passing: false,
            dropped: 0,
        }
    }

    /// Filters a chunk, handing what passes to `out`.
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        while !chunk.is_empty() {
            let end = chunk.iter().position(|b| *b == b'\n').map(|i| i + 1);
            let (segment, rest) = chunk.split_at(end.unwrap_or(chunk.len()));
            chunk = rest;
            let complete = end.is_some();
            if self.passing {
                out(segment)?;
                self.passing = !complete;
                continue;
            }
            self.held.extend_from_slice(segment);
            if complete {
                let line = String::from_utf8_lossy(&self.held[..self.held.len() - 1]);
                if (self.drop)(line.trim_end_matches('\r')) {
                    self.dropped += 1;
                } else {
                    out(&self.held)?;
                }
                self.held.clear();
            } else if self.held.len() > HOLD_MAX {
                out(&self.held)?;
                self.held.clear();
                self.passing = true;
            }
        }
        Ok(())
    }

    /// Hands on a last line without a newline.
    pub fn finish(
        &mut self,
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        if !self.held.is_empty() {
            let line = String::from_utf8_lossy(&self.held).into_owned();
            if (self.drop)(&line) {
                self.dropped += 1;
            } else {
                out(&self.held)?;
            }
            self.held.clear();
        }
        Ok(())
    }

    /// How many lines were dropped.
    pub fn dropped(&self) -> usize {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], piece: usize) -> (Vec<u8>, usize) {
        let mut f = LineFilter::new(|l| l == "DROP ME;");
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            f.feed(chunk, &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        }
        f.finish(&mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        (out, f.dropped())
    }

    #[test]
    fn drops_exact_lines_across_chunk_boundaries() {
        let long = "x".repeat(5000);
        let input = format!("a;\nDROP ME;\n{long}DROP ME;\nb;\nDROP ME;");
        let want = format!("a;\n{long}DROP ME;\nb;\n");
        for piece in [1, 3, 7, 100, 10_000] {
            let (out, dropped) = run(input.as_bytes(), piece);
            assert_eq!(String::from_utf8(out).unwrap(), want, "piece {piece}");
            assert_eq!(dropped, 2);
        }
    }
}

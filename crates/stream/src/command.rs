//! Sources fed by a stream: standard input or the output of a producer command
//! (`backup --stdin`, `--stdin-from-command`). A tar stream becomes a tree of real entries,
//! anything else a single file; a producer's failure must end the stream with an error so
//! that no snapshot is saved.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::entry::{Entry, EntryKind, EntrySource, Metadata, Timestamp, Warning};
use crate::error::Error;
use crate::read_ahead::ReadAhead;
use crate::tar_read::{looks_like_tar, TarSource};

/// How to interpret an input stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    /// Detect a tar stream from its first header.
    Auto,
    /// Always a tar stream.
    Tar,
    /// Always one file (restic's behaviour).
    Raw,
}

/// Builds the entry source for a stream: a [`TarSource`] when `mode` says so or the first
/// 512 bytes are a tar header, else a [`SingleFile`] named `name`. The flag is true for tar.
/// The input is read on a thread of its own ([`ReadAhead`]).
pub fn stream_source(
    input: Box<dyn Read + Send>,
    mode: StreamMode,
    name: &str,
) -> Result<(Box<dyn EntrySource + Send>, bool), Error> {
    let mut input = ReadAhead::spawn(input).map_err(Error::ReadStream)?;
    let mut head = vec![0u8; 512];
    let n = read_full(&mut input, &mut head).map_err(Error::ReadStream)?;
    head.truncate(n);
    let is_tar = match mode {
        StreamMode::Tar => true,
        StreamMode::Raw => false,
        StreamMode::Auto => n == 512 && looks_like_tar(&head),
    };
    // The bytes read for detection go first again.
    let reader: Box<dyn Read + Send> = Box::new(io::Cursor::new(head).chain(input));
    if is_tar {
        Ok((Box::new(TarSource::new(reader)), true))
    } else {
        Ok((Box::new(SingleFile::new(name, reader)), false))
    }
}

/// Bytes of pipe buffer asked for (Linux's default is 64 KiB; 1 MiB is the unprivileged limit
/// unless `/proc/sys/fs/pipe-max-size` says otherwise).
#[cfg(target_os = "linux")]
const PIPE_BYTES: usize = 1 << 20;

/// Enlarges the kernel buffer of the pipe `fd` reads from, if it is a pipe. With the default
/// 64 KiB a producer writing `tar`'s 10 KiB records and our 512 KiB reads ping-pong through
/// a wake-up per record; a larger buffer lets each side run for a whole read. Best effort: a
/// file, a terminal or a refused size leaves everything as it was.
pub fn widen_pipe(fd: impl std::os::fd::AsFd) {
    #[cfg(target_os = "linux")]
    {
        // Fails harmlessly (EBADF/EINVAL/EPERM) on anything that is not a pipe or when the
        // size is refused.
        let _ = rustix::pipe::fcntl_setpipe_size(fd, PIPE_BYTES);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A stream of unknown length as a single regular file, owned by the current user, mode 0644,
/// modified now.
pub struct SingleFile {
    name: PathBuf,
    reader: Box<dyn Read + Send>,
    done: bool,
}

impl SingleFile {
    /// The file `name` whose content is everything `reader` yields.
    pub fn new(name: &str, reader: Box<dyn Read + Send>) -> Self {
        SingleFile {
            name: PathBuf::from(name.trim_start_matches('/')),
            reader,
            done: false,
        }
    }
}

impl EntrySource for SingleFile {
    fn next_entry(&mut self) -> Result<Option<Entry<'_>>, Error> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        // A clock before 1970 is a broken host; the epoch is as good a time as any then.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let meta = Metadata {
            mode: 0o644,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            mtime: Timestamp {
                secs: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
                nanos: now.subsec_nanos(),
            },
            ..Metadata::default()
        };
        // The size is unknown until the end; the archiver records what it read.
        Ok(Some(Entry {
            path: self.name.clone(),
            kind: EntryKind::File,
            meta,
            data: Some(self.reader.as_mut()),
        }))
    }

    fn warnings(&self) -> &[Warning] {
        &[]
    }
}

/// The standard output of a producer command, shared between the reader handed to the source
/// and the [`CommandGate`] that checks the command's exit status at the end.
#[derive(Clone)]
pub struct CommandPipe {
    inner: Arc<Mutex<(Child, Option<ChildStdout>)>>,
    program: String,
}

impl CommandPipe {
    /// Starts `argv` with its stdout piped (stdin closed, stderr passed through), without the
    /// environment variables named in `remove_env` (the producer needs none of our secrets).
    pub fn spawn<S: AsRef<OsStr>>(argv: &[S], remove_env: &[&str]) -> Result<Self, Error> {
        let (program, args) = argv.split_first().ok_or(Error::NoCommand)?;
        let name = program.as_ref().to_string_lossy().into_owned();
        let mut command = Command::new(program.as_ref());
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        for var in remove_env {
            command.env_remove(var);
        }
        let mut child = command.spawn().map_err(|source| Error::StartCommand {
            program: name.clone(),
            source,
        })?;
        let stdout = child.stdout.take();
        if let Some(out) = &stdout {
            widen_pipe(out);
        }
        Ok(CommandPipe {
            inner: Arc::new(Mutex::new((child, stdout))),
            program: name,
        })
    }

    /// Reads the rest of the output and waits for the command; an error unless it exited 0.
    fn finish(&self) -> Result<(), Error> {
        let output_error = |source| Error::CommandOutput {
            program: self.program.clone(),
            source,
        };
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| output_error(io::Error::other("command state poisoned")))?;
        if let Some(mut out) = guard.1.take() {
            io::copy(&mut out, &mut io::sink()).map_err(output_error)?;
        }
        let status = guard.0.wait().map_err(output_error)?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::CommandFailed {
                program: self.program.clone(),
                status,
            })
        }
    }
}

impl Read for CommandPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("command state poisoned"))?;
        match guard.1.as_mut() {
            Some(out) => out.read(buf),
            None => Ok(0),
        }
    }
}

/// Wraps a source fed by a command: at the end of the stream the command must have exited 0,
/// else the source fails, and the backup with it, so no snapshot is saved.
pub struct CommandGate {
    inner: Box<dyn EntrySource + Send>,
    pipe: CommandPipe,
}

impl CommandGate {
    /// Gates `inner` on `pipe`'s exit status.
    pub fn new(inner: Box<dyn EntrySource + Send>, pipe: CommandPipe) -> Self {
        CommandGate { inner, pipe }
    }
}

impl EntrySource for CommandGate {
    fn next_entry(&mut self) -> Result<Option<Entry<'_>>, Error> {
        match self.inner.next_entry()? {
            Some(entry) => Ok(Some(entry)),
            None => {
                self.pipe.finish()?;
                Ok(None)
            }
        }
    }

    fn warnings(&self) -> &[Warning] {
        self.inner.warnings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(source: &mut dyn EntrySource) -> Result<Vec<(PathBuf, Vec<u8>)>, Error> {
        let mut out = Vec::new();
        while let Some(entry) = source.next_entry()? {
            let mut data = Vec::new();
            if let Some(r) = entry.data {
                r.read_to_end(&mut data).map_err(Error::ReadStream)?;
            }
            out.push((entry.path, data));
        }
        Ok(out)
    }

    #[test]
    fn raw_stream_is_one_file_with_all_bytes() {
        let input = Box::new(io::Cursor::new(b"hello world".to_vec()));
        let (mut src, is_tar) = stream_source(input, StreamMode::Auto, "/dir/x.txt").unwrap();
        assert!(!is_tar);
        let got = drain(src.as_mut()).unwrap();
        assert_eq!(
            got,
            vec![(PathBuf::from("dir/x.txt"), b"hello world".to_vec())]
        );
    }

    #[test]
    fn command_output_passes_and_failure_ends_the_stream_with_an_error() {
        let pipe = CommandPipe::spawn(&["sh", "-c", "printf abc"], &[]).unwrap();
        let (inner, _) = stream_source(Box::new(pipe.clone()), StreamMode::Raw, "out").unwrap();
        let mut gate = CommandGate::new(inner, pipe);
        assert_eq!(drain(&mut gate).unwrap()[0].1, b"abc");

        let pipe = CommandPipe::spawn(&["sh", "-c", "printf abc; exit 3"], &[]).unwrap();
        let (inner, _) = stream_source(Box::new(pipe.clone()), StreamMode::Raw, "out").unwrap();
        let mut gate = CommandGate::new(inner, pipe);
        let err = drain(&mut gate).unwrap_err();
        assert!(matches!(err, Error::CommandFailed { .. }), "{err}");
    }

    #[test]
    fn secrets_are_removed_from_the_producer_environment() {
        // HOME is set in the test process (as in any login); the child must not see it.
        let pipe =
            CommandPipe::spawn(&["sh", "-c", "printf '%s' \"${HOME-unset}\""], &["HOME"]).unwrap();
        let (inner, _) = stream_source(Box::new(pipe.clone()), StreamMode::Raw, "out").unwrap();
        let mut gate = CommandGate::new(inner, pipe);
        assert_eq!(drain(&mut gate).unwrap()[0].1, b"unset");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn widen_pipe_enlarges_a_pipe_and_leaves_a_file_alone() {
        let (reader, _writer) = rustix::pipe::pipe().unwrap();
        let before = rustix::pipe::fcntl_getpipe_size(&reader).unwrap();
        widen_pipe(&reader);
        let after = rustix::pipe::fcntl_getpipe_size(&reader).unwrap();
        // An unprivileged process may ask for up to /proc/sys/fs/pipe-max-size (1 MiB unless
        // lowered); the kernel's default is 64 KiB.
        let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(PIPE_BYTES);
        assert_eq!(after, PIPE_BYTES.min(max).max(before), "was {before}");
        // Not a pipe: nothing happens, nothing fails.
        let file = tempfile::tempfile().unwrap();
        widen_pipe(&file);
    }

    #[test]
    fn missing_or_empty_command_is_a_typed_error() {
        let empty: [&str; 0] = [];
        assert!(matches!(
            CommandPipe::spawn(&empty, &[]),
            Err(Error::NoCommand)
        ));
        assert!(matches!(
            CommandPipe::spawn(&["/nonexistent/snapback-producer"], &[]),
            Err(Error::StartCommand { .. })
        ));
    }
}

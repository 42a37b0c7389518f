//! Reading a file the configuration names (the file itself, certificates, keys, CA bundles, ticket keys, the server
//! state file): only a regular file, and only up to a size fit for its kind. A path naming `/dev/zero` would
//! otherwise be read until memory ran out, and one naming a FIFO would block the reader until someone wrote to it;
//! a reload must fail with the reason instead, leaving the running configuration in place.

use std::fmt;
use std::io::Read;
use std::path::Path;

/// The kinds of file the configuration names, each with the most bytes one may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// The configuration file.
    Config,
    /// A PEM certificate chain, private key or CA bundle (a public CA bundle is about 250 KiB).
    Pem,
    /// A `tls.ticket_keys` file (a key is 108 characters a line).
    TicketKeys,
    /// A `tls.client_crl` file (a large CA's list runs to megabytes).
    Crl,
    /// A `tls.ocsp_response` file (one DER response, a few KiB).
    OcspResponse,
    /// `admin.state_file` (one line per server).
    ServerStates,
}

impl FileKind {
    /// The largest file of this kind that is read.
    pub const fn max_bytes(self) -> u64 {
        match self {
            FileKind::Config | FileKind::ServerStates => 16 << 20,
            FileKind::Pem => 1 << 20,
            FileKind::Crl => 16 << 20,
            FileKind::TicketKeys | FileKind::OcspResponse => 64 << 10,
        }
    }

    fn name(self) -> &'static str {
        match self {
            FileKind::Config => "configuration file",
            FileKind::Pem => "PEM file",
            FileKind::TicketKeys => "ticket key file",
            FileKind::Crl => "CRL file",
            FileKind::OcspResponse => "OCSP response file",
            FileKind::ServerStates => "server state file",
        }
    }
}

/// Why a named file was not read.
#[derive(Debug)]
pub enum NamedFileError {
    /// It cannot be opened or read (missing, no permission, I/O error).
    Io(std::io::Error),
    /// It is a directory, device, FIFO or socket.
    NotRegular(&'static str),
    /// It holds more than its kind may.
    TooLarge(FileKind),
}

impl NamedFileError {
    /// Whether the file does not exist.
    pub fn is_missing(&self) -> bool {
        matches!(self, NamedFileError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

impl fmt::Display for NamedFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamedFileError::Io(e) => write!(f, "{e}"),
            NamedFileError::NotRegular(what) => write!(f, "not a regular file (a {what})"),
            NamedFileError::TooLarge(kind) => {
                write!(f, "larger than the {} bytes a {} may have", kind.max_bytes(), kind.name())
            }
        }
    }
}

/// The bytes of the regular file at `path`, at most `kind`'s size (symbolic links are followed, as Kubernetes
/// secrets mounted as files are links).
pub fn read(path: &Path, kind: FileKind) -> Result<Vec<u8>, NamedFileError> {
    // Checked before opening: opening a FIFO blocks until a writer comes.
    regular(&std::fs::metadata(path).map_err(NamedFileError::Io)?, kind)?;
    let file = std::fs::File::open(path).map_err(NamedFileError::Io)?;
    // And again on what was opened, in case the path changed between the two.
    regular(&file.metadata().map_err(NamedFileError::Io)?, kind)?;
    read_capped(file, kind)
}

/// [`read`], as text.
pub fn read_text(path: &Path, kind: FileKind) -> Result<String, NamedFileError> {
    let bytes = read(path, kind)?;
    String::from_utf8(bytes)
        .map_err(|_| NamedFileError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text")))
}

/// Up to `kind`'s size of `source` (which may grow while it is read, or be a stream such as standard input).
pub fn read_capped(source: impl Read, kind: FileKind) -> Result<Vec<u8>, NamedFileError> {
    let mut bytes = Vec::new();
    source.take(kind.max_bytes().saturating_add(1)).read_to_end(&mut bytes).map_err(NamedFileError::Io)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > kind.max_bytes() {
        return Err(NamedFileError::TooLarge(kind));
    }
    Ok(bytes)
}

fn regular(meta: &std::fs::Metadata, kind: FileKind) -> Result<(), NamedFileError> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_file() {
        return if meta.len() > kind.max_bytes() { Err(NamedFileError::TooLarge(kind)) } else { Ok(()) };
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    };
    Err(NamedFileError::NotRegular(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_under_the_cap_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.pem");
        std::fs::write(&small, "hello").unwrap();
        assert_eq!(read(&small, FileKind::Pem).unwrap(), b"hello");
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; (FileKind::Pem.max_bytes() + 1) as usize]).unwrap();
        assert!(matches!(read(&big, FileKind::Pem), Err(NamedFileError::TooLarge(FileKind::Pem))));
        assert!(matches!(read(Path::new("/dev/zero"), FileKind::Pem), Err(NamedFileError::NotRegular("device"))));
        assert!(matches!(read(dir.path(), FileKind::Pem), Err(NamedFileError::NotRegular("directory"))));
        assert!(read(&dir.path().join("missing"), FileKind::Pem).unwrap_err().is_missing());
    }

    #[test]
    fn a_stream_is_cut_at_the_cap() {
        let endless = std::io::repeat(b'x');
        assert!(matches!(read_capped(endless, FileKind::TicketKeys), Err(NamedFileError::TooLarge(_))));
    }
}

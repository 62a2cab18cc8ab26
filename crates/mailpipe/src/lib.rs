//! mailpipe library side of the binary

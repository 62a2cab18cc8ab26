//! Templates, tracked links and MIME for mailpipe messages

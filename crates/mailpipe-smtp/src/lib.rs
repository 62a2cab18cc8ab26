//! SMTP dispatch for mailpipe: the transport seam, a TCP_NODELAY connection pool and the reply classifier

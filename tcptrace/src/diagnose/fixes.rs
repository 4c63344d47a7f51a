//! Application fixes shared by several findings: the same cause (a client that opens a new
//! connection per request) gets the same advice whichever finding it shows up in.

/// What a client that piles up TIME_WAIT towards a peer should change.
pub fn client_fixes() -> Vec<String> {
    vec![
        "Reuse connections: a connection pool / keep-alive in the HTTP or database client \
         instead of a new connection per request."
            .into(),
        "A reverse proxy in front of the peer: enable upstream keep-alive (nginx: `keepalive` \
         in the upstream block with `proxy_http_version 1.1` and an empty `Connection` header)."
            .into(),
    ]
}

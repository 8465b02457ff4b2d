// The PostgreSQL wire protocol, version 3: the client side of physical streaming replication.
//
// Design
// ======
// This module moves bytes between a PostgreSQL 15 primary and the page server. It knows the framing of
// protocol messages, authentication, the replication command grammar and the tar framing of base
// backups; it knows nothing of files, of the storage engine or of the layout of WAL records.
//
// Invariants:
// 1. One `PGConnection` is used by one thread at a time. Every call blocks the calling thread; waits go
//    through poll(2) with a deadline, so no call can hang longer than its timeout.
// 2. Nothing is buffered without a bound: a backend message larger than
//    `PGConnection.maxBackendMessageBytes` is a protocol violation, a base backup is handed out one
//    CopyData message at a time, and `TarStreamReader` holds at most one 512-byte header (plus a bounded
//    long-name record) of its own.
// 3. A connection is in exactly one protocol state (idle, copy-out for a base backup, copy-both for
//    streaming, broken, closed). A call that does not fit the state fails with `invalidState` before a
//    byte is written. Any I/O error, timeout or unexpected message leaves the connection `broken`,
//    because the position in the message stream is then unknown; the caller reconnects.
// 4. A password never appears in an error, a description or a log line: `ConnInfo.description` is the
//    redacted form.
// 5. SCRAM-SHA-256 authentication succeeds only after the server has proven that it knows the password
//    (its ServerSignature matches); a server that skips the proof is refused.
// 6. LSNs cross this module's boundary as `UInt64` (as PostgreSQL's XLogRecPtr) and print as "X/Y".
//
// Limitations (documented, not silent): no TLS (sslmode=require and stricter are refused), no GSSAPI or
// SSPI, one host per connection string, SASLprep is not applied to passwords (ASCII passwords, the
// overwhelming case, are unaffected; a non-ASCII password is used as its UTF-8 bytes, which matches the
// server whenever the password is already in NFKC form), and BASE_BACKUP uses the PostgreSQL 15
// copy-stream format (`TARGET 'client'`), so servers older than 15 are not supported.

/// Namespace for helpers that have no better home: LSN text.
public enum WireProtocol {
    /// Parses an LSN written as PostgreSQL prints it: two hexadecimal numbers of up to 8 digits
    /// separated by a slash ("16/B374D848"). Returns nil for anything else.
    public static func parseLSN(_ text: some StringProtocol) -> UInt64? {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, (1...8).contains(parts[0].count), (1...8).contains(parts[1].count),
              let high = UInt32(parts[0], radix: 16), let low = UInt32(parts[1], radix: 16)
        else { return nil }
        return UInt64(high) << 32 | UInt64(low)
    }

    /// Formats an LSN the way PostgreSQL does ("%X/%X").
    public static func formatLSN(_ lsn: UInt64) -> String {
        String(UInt32(truncatingIfNeeded: lsn >> 32), radix: 16, uppercase: true) + "/"
            + String(UInt32(truncatingIfNeeded: lsn), radix: 16, uppercase: true)
    }
}

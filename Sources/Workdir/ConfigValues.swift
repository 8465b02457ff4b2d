import Foundation

// Sizes and durations as the config file and the tools spell them (format-spec.md, "The config file").

/// "256MiB", "1GB", "64k", "4096" -> bytes.
public func parseSize(_ text: String) -> Int? {
    let s = text.trimmingCharacters(in: .whitespaces)
    let digits = s.prefix { $0.isNumber }
    guard let n = Int(digits) else { return nil }
    let unit = s.dropFirst(digits.count).trimmingCharacters(in: .whitespaces).lowercased()
    let mult: Int
    switch unit {
    case "", "b": mult = 1
    case "k", "kb", "kib": mult = 1 << 10
    case "m", "mb", "mib": mult = 1 << 20
    case "g", "gb", "gib": mult = 1 << 30
    default: return nil
    }
    let (bytes, overflow) = n.multipliedReportingOverflow(by: mult)
    return overflow ? nil : bytes
}

/// "10s", "5m", "1h", "250ms", "30" -> seconds.
public func parseDuration(_ text: String) -> Double? {
    let s = text.trimmingCharacters(in: .whitespaces)
    let digits = s.prefix { $0.isNumber || $0 == "." }
    guard let n = Double(digits) else { return nil }
    switch s.dropFirst(digits.count).trimmingCharacters(in: .whitespaces).lowercased() {
    case "", "s", "sec": return n
    case "ms": return n / 1000
    case "m", "min": return n * 60
    case "h": return n * 3600
    case "d": return n * 86400
    default: return nil
    }
}

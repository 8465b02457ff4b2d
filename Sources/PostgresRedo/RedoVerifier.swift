import LSM
import PostgresWAL

/// Checks our redo against the primary, record by record, using `wal_consistency_checking`.
///
/// With `wal_consistency_checking` on, the primary attaches to every block reference an image of the
/// page as it left that record (without BKPIMAGE_APPLY unless it is a real full-page write). For each
/// such image the verifier asks for the page at the record's end LSN (built by our redo from whatever
/// the store holds) and compares the two after PostgreSQL's masking for the record's resource manager
/// (as verifyBackupPageConsistency does). Beyond PostgreSQL, visibility-map pages are also compared
/// bit for bit (PostgreSQL's masking hides the whole bitmap as unused space).
///
/// One visibility-map difference is PostgreSQL's own ordering, not ours: a backend clears a map bit
/// (`visibilitymap_clear`, holding only the heap page's lock) before it inserts the heap record that
/// says so, so another backend's VISIBLE record for a neighbouring heap block can be logged in between
/// with an image of the map page that already lacks the bit. At that record our replay still has the
/// bit. Such a difference (ours has bits set that the image lacks, never the other way) is held as a
/// pending clear: it is confirmed when a later record references each of those heap blocks (the
/// record that logs the clear), and reported as a mismatch if `pendingClearRecords` checked records
/// go by without it. Invariant: a map difference is never counted as matched unless every heap block
/// whose bits differ was touched by a later record.
///
/// Outcomes per image: matched; mismatched (the first differing offset is reported); unverifiable
/// (the store has no base for the page: its history starts before the WAL we saw); unsupported (a
/// resource manager without our redo yet: the page fails with a clear error, which is the contract);
/// failed (any other error: counted as a mismatch).
///
/// The verifier holds no page state of its own; it is safe to call from one thread at a time.
public final class RedoVerifier {
    public struct Mismatch: Sendable, CustomStringConvertible {
        public var key: Key
        public var recordStart: LSN
        public var recordEnd: LSN
        public var resourceManager: String
        public var recordType: String
        public var blockId: UInt8
        /// The first differing byte after masking (nil when the page could not be built at all).
        public var offset: Int?
        public var detail: String

        public var description: String {
            "\(resourceManager) \(recordType) record at \(recordStart) (end \(recordEnd)), block ref #\(blockId), key \(key): "
                + (offset.map { "first difference at offset \($0); " } ?? "") + detail
        }
    }

    public struct Counts: Sendable {
        public var matched = 0
        public var mismatched = 0
        public var unverifiable = 0
        public var unsupported = 0
        public var failed = 0
        /// The page's chain is longer than the store's max_chain_length: it cannot be built until
        /// compaction writes newer images (not a redo error).
        public var chainTooLong = 0
        /// Visibility-map images that lacked bits a later record cleared (see the note above); also
        /// counted in `matched` once confirmed.
        public var vmClearsAhead = 0
        public var checked: Int { matched + mismatched + failed }
        public init() {}
    }

    /// Per "Rmgr/RECORD_TYPE".
    public private(set) var counts: [String: Counts] = [:]
    public private(set) var mismatches: [Mismatch] = []
    /// Only the first this many mismatches are kept (all are counted).
    public var keepMismatches = 100
    /// Called for every mismatch (for logs and metrics).
    public var onMismatch: ((Mismatch) -> Void)?
    /// When set, a mismatch's detail ends with how the store answered the read (`TimelineStore.explain`).
    public var explain: ((Key, LSN) -> String)?

    let page: (Key, LSN) throws -> [UInt8]?

    /// `page(key, lsn)` returns the page as of `lsn` reconstructed with our redo (or nil when absent).
    public init(page: @escaping (Key, LSN) throws -> [UInt8]?) {
        self.page = page
    }

    public var totals: Counts {
        counts.values.reduce(into: Counts()) {
            $0.matched += $1.matched; $0.mismatched += $1.mismatched; $0.unverifiable += $1.unverifiable
            $0.unsupported += $1.unsupported; $0.failed += $1.failed
            $0.chainTooLong += $1.chainTooLong; $0.vmClearsAhead += $1.vmClearsAhead
        }
    }

    /// A map difference waiting for the heap records that log its clears.
    struct PendingClear {
        var relation: RelFileNode
        var heapBlocks: Set<UInt32>
        var typeName: String
        var mismatch: Mismatch
        var deadline: Int
    }
    var pendingClears: [PendingClear] = []
    /// Map differences waiting for their heap record.
    public var pendingClearCount: Int { pendingClears.count }
    var checkedRecords = 0
    /// How many checked records a pending clear may wait for its heap record.
    public var pendingClearRecords = 5_000

    /// Map differences not yet confirmed (call at the end of a run: they count as mismatches then).
    public func flushPendingClears() {
        for p in pendingClears { expire(p) }
        pendingClears.removeAll()
    }

    private func expire(_ p: PendingClear) {
        var c = counts[p.typeName] ?? Counts()
        c.mismatched += 1
        counts[p.typeName] = c
        var m = p.mismatch
        m.detail += " (no later record touched heap blocks \(p.heapBlocks.sorted()))"
        if mismatches.count < keepMismatches { mismatches.append(m) }
        onMismatch?(m)
    }

    /// Confirms pending clears whose heap blocks `record` references; expires the overdue ones.
    private func settlePendingClears(_ record: DecodedRecord) {
        guard !pendingClears.isEmpty else { return }
        for b in record.blocks where b.fork == .main {
            for i in pendingClears.indices where pendingClears[i].relation == b.relation {
                pendingClears[i].heapBlocks.remove(b.block.rawValue)
            }
        }
        var kept: [PendingClear] = []
        for p in pendingClears {
            if p.heapBlocks.isEmpty {
                var c = counts[p.typeName] ?? Counts()
                c.matched += 1
                c.vmClearsAhead += 1
                counts[p.typeName] = c
            } else if checkedRecords >= p.deadline {
                expire(p)
            } else {
                kept.append(p)
            }
        }
        pendingClears = kept
    }

    /// The heap blocks whose map bits are set in `ours` and clear in `primary`, when that is the only
    /// kind of difference between the two map pages (nil otherwise).
    static func bitsClearedAhead(ours: [UInt8], primary: [UInt8], vmBlock: UInt32) -> Set<UInt32>? {
        var blocks: Set<UInt32> = []
        for i in Page.headerSize..<Page.size where ours[i] != primary[i] {
            guard primary[i] & ~ours[i] == 0 else { return nil }
            let extra = ours[i] & ~primary[i]
            for pair in 0..<4 where extra & (0x3 << (pair * 2)) != 0 {
                blocks.insert(vmBlock * (UInt32(Page.size - Page.headerSize) * 4) + UInt32(i - Page.headerSize) * 4 + UInt32(pair))
            }
        }
        return blocks
    }

    /// Whether `record` carries anything to check.
    public static func hasCheckImages(_ record: DecodedRecord) -> Bool {
        record.blocks.contains { $0.image.map { !$0.apply } ?? false }
    }

    /// Checks every consistency image of `record`. Call after the record is ingested, in WAL order or
    /// later (the page is asked for as of the record's end).
    public func check(_ record: DecodedRecord) {
        checkedRecords += 1
        settlePendingClears(record)
        for b in record.blocks {
            guard let image = b.image, !image.apply else { continue }
            let rmgr = record.resourceManager
            let typeName = "\(rmgr)/\(RecordTypeNames.name(rmgr, info: record.info))"
            var c = counts[typeName] ?? Counts()
            defer { counts[typeName] = c }
            let key = KeySpace.relationBlock(RelTag(b.relation, b.fork), b.block.rawValue)
            func report(_ offset: Int?, _ detail: String) {
                let m = Mismatch(key: key, recordStart: record.startLSN, recordEnd: record.endLSN,
                                 resourceManager: "\(rmgr)", recordType: RecordTypeNames.name(rmgr, info: record.info),
                                 blockId: b.id, offset: offset, detail: detail + (explain.map { "\n" + $0(key, record.endLSN) } ?? ""))
                if mismatches.count < keepMismatches { mismatches.append(m) }
                onMismatch?(m)
            }
            let ours: [UInt8]
            do {
                guard let p = try page(key, record.endLSN) else {
                    c.failed += 1
                    report(nil, "the store has no value for the page")
                    continue
                }
                ours = p
            } catch let e as StorageError where e.code == .notFound || e.message.contains("below the GC cutoff") {
                // No base to build on, or the version was garbage-collected before the check got
                // to it (the checker lags behind ingest).
                c.unverifiable += 1
                continue
            } catch let e as StorageError where e.message.contains("max_chain_length") || e.message.hasPrefix("redo chainTooLong") {
                c.chainTooLong += 1
                continue
            } catch let e as StorageError where e.code == .redo && e.message.hasPrefix("redo unsupported") {
                c.unsupported += 1
                continue
            } catch {
                c.failed += 1
                report(nil, "\(error)")
                continue
            }
            if let difference = Self.compare(ours: ours, primary: image.page, resourceManager: rmgr,
                                             block: b.block.rawValue, isVisibilityMap: b.fork == .visibilityMap,
                                             recordEnd: record.endLSN) {
                if b.fork == .visibilityMap,
                   let blocks = Self.bitsClearedAhead(ours: ours, primary: image.page, vmBlock: b.block.rawValue),
                   !blocks.isEmpty {
                    let m = Mismatch(key: key, recordStart: record.startLSN, recordEnd: record.endLSN,
                                     resourceManager: "\(rmgr)", recordType: RecordTypeNames.name(rmgr, info: record.info),
                                     blockId: b.id, offset: difference.offset,
                                     detail: difference.detail + (explain.map { "\n" + $0(key, record.endLSN) } ?? ""))
                    pendingClears.append(PendingClear(relation: b.relation, heapBlocks: blocks, typeName: typeName,
                                                      mismatch: m, deadline: checkedRecords + pendingClearRecords))
                    continue
                }
                c.mismatched += 1
                // A second read tells a transient read-path race from a wrong stored history.
                var again = "a second read failed"
                if let second = try? page(key, record.endLSN) {
                    again = Self.compare(ours: second, primary: image.page, resourceManager: rmgr, block: b.block.rawValue,
                                         isVisibilityMap: b.fork == .visibilityMap, recordEnd: record.endLSN) == nil
                        ? "a second read now matches" : (second == ours ? "a second read gives the same page" : "a second read differs from the first and from the primary")
                }
                report(difference.offset, difference.detail + " (\(again))")
            } else {
                c.matched += 1
            }
        }
    }

    /// Compares our page with the primary's image under masking; nil when they agree.
    public static func compare(ours: [UInt8], primary: [UInt8], resourceManager: ResourceManagerId, block: UInt32,
                               isVisibilityMap: Bool, recordEnd: LSN) -> (offset: Int, detail: String)? {
        guard ours.count == Page.size, primary.count == Page.size else {
            return (0, "page sizes \(ours.count) and \(primary.count)")
        }
        var a = ours, b = primary
        let oursLSN = a.withUnsafeMutableBytes { Page($0.baseAddress!).lsn }
        if oursLSN > recordEnd.rawValue {
            // Replayed past this record already (PostgreSQL skips such pages too).
            return nil
        }
        if isVisibilityMap {
            // PostgreSQL's masking hides the bitmap; we compare it exactly.
            for i in Page.headerSize..<Page.size where a[i] != b[i] {
                return (i, "visibility map bits differ: ours 0x\(String(a[i], radix: 16)), primary 0x\(String(b[i], radix: 16))")
            }
        }
        a.withUnsafeMutableBytes { _ = PageMasking.mask(Page($0.baseAddress!), resourceManager: resourceManager, blockNumber: block) }
        b.withUnsafeMutableBytes { _ = PageMasking.mask(Page($0.baseAddress!), resourceManager: resourceManager, blockNumber: block) }
        let offset = a.withUnsafeBytes { x in b.withUnsafeBytes { y in PageMasking.firstDifference(x, y) } }
        guard let offset else { return nil }
        return (offset, "masked pages differ: ours 0x\(String(a[offset], radix: 16)), primary 0x\(String(b[offset], radix: 16))")
    }

    /// A table of the counts, one line per record type, for logs and tools.
    public func report() -> String {
        var lines = ["record type                          checked  matched  mismatched  failed  unverifiable  unsupported  chain too long"]
        for (name, c) in counts.sorted(by: { $0.key < $1.key }) {
            lines.append(padRight(name, 36)
                + " \(pad(c.checked, 7))  \(pad(c.matched, 7))  \(pad(c.mismatched, 10))  \(pad(c.failed, 6))  \(pad(c.unverifiable, 12))  \(pad(c.unsupported, 11))  \(pad(c.chainTooLong, 14))")
        }
        let t = totals
        lines.append(padRight("total", 36)
            + " \(pad(t.checked, 7))  \(pad(t.matched, 7))  \(pad(t.mismatched, 10))  \(pad(t.failed, 6))  \(pad(t.unverifiable, 12))  \(pad(t.unsupported, 11))  \(pad(t.chainTooLong, 14))")
        if t.vmClearsAhead > 0 || !pendingClears.isEmpty {
            lines.append("visibility-map images taken after a clear whose heap record came later: \(t.vmClearsAhead) confirmed, \(pendingClears.count) still waiting")
        }
        return lines.joined(separator: "\n")
    }

    private func padRight(_ s: String, _ width: Int) -> String {
        s + String(repeating: " ", count: max(0, width - s.count))
    }

    private func pad(_ n: Int, _ width: Int) -> String {
        let s = String(n)
        return String(repeating: " ", count: max(0, width - s.count)) + s
    }
}

/// bufpage.c's page edits, reproduced byte for byte: where tuples land decides whether a
/// reconstructed page equals the primary's.
///
/// Compaction (compactify_tuples) packs the surviving items against pd_special in line pointer
/// order, each item taking MAXALIGN(length) bytes copied from its old place (padding included), and
/// leaves the bytes between pd_lower and the new pd_upper as they were.
extension Page {
    /// PageAddItemExtended. `offset` 0 means "first free slot, else the end". Returns the offset used,
    /// or throws where PostgreSQL would return InvalidOffsetNumber (redo turns that into a PANIC).
    @discardableResult
    public func addItem(_ item: UnsafeRawBufferPointer, at offset: Int, overwrite: Bool = false,
                        isHeap: Bool = false) throws -> Int {
        try checkPointers("PageAddItem")
        let limit = maxOffset + 1
        var offsetNumber = offset
        var needShuffle = false
        if offsetNumber > 0 {
            if overwrite {
                if offsetNumber < limit {
                    let id = itemId(offsetNumber)
                    if id.isUsed || id.hasStorage {
                        throw RedoError.corruptPage("PageAddItem: will not overwrite used line pointer \(offsetNumber)")
                    }
                }
            } else if offsetNumber < limit {
                needShuffle = true
            }
        } else if hasFreeLinePointers {
            offsetNumber = 1
            while offsetNumber < limit {
                let id = itemId(offsetNumber)
                if !id.isUsed && !id.hasStorage { break }
                offsetNumber += 1
            }
            if offsetNumber >= limit { clearHasFreeLinePointers() }
        } else {
            offsetNumber = limit
        }
        if offsetNumber > limit {
            throw RedoError.corruptPage("PageAddItem: offset \(offsetNumber) is beyond the first unused line pointer \(limit)")
        }
        if isHeap && offsetNumber > Page.maxHeapTuplesPerPage {
            throw RedoError.corruptPage("PageAddItem: offset \(offsetNumber) exceeds MaxHeapTuplesPerPage")
        }
        let newLower = (offsetNumber == limit || needShuffle) ? lower + Page.itemIdSize : lower
        let newUpper = upper - Page.maxAlign(item.count)
        if newLower > newUpper {
            throw RedoError.corruptPage("PageAddItem: no room for an item of \(item.count) bytes (lower \(lower), upper \(upper))")
        }
        if needShuffle {
            let at = itemIdOffset(offsetNumber)
            move(from: at, to: at + Page.itemIdSize, count: (limit - offsetNumber) * Page.itemIdSize)
        }
        setItemId(offsetNumber, .normal(offset: newUpper, length: item.count))
        write(item, at: newUpper)
        lower = newLower
        upper = newUpper
        return offsetNumber
    }

    private func checkItem(_ what: String, _ offnum: Int) throws -> (offset: Int, size: Int) {
        let n = maxOffset
        guard offnum >= 1, offnum <= n else { throw RedoError.corruptPage("\(what): invalid index offnum \(offnum) (page has \(n))") }
        let id = itemId(offnum)
        let off = id.offset, size = id.length
        guard off >= upper, off + size <= special, off == Page.maxAlign(off) else {
            throw RedoError.corruptPage("\(what): corrupted line pointer \(offnum): offset = \(off), size = \(size)")
        }
        return (off, size)
    }

    /// PageIndexTupleDelete: remove an index item and close the gaps in both the line pointer array
    /// and the tuple space.
    public func indexTupleDelete(_ offnum: Int) throws {
        try checkPointers("PageIndexTupleDelete")
        var nline = maxOffset
        let (offset, rawSize) = try checkItem("PageIndexTupleDelete", offnum)
        let size = Page.maxAlign(rawSize)
        let next = itemIdOffset(offnum + 1)
        let nbytes = lower - next
        if nbytes > 0 { move(from: next, to: itemIdOffset(offnum), count: nbytes) }
        let u = upper
        if offset > u { move(from: u, to: u + size, count: offset - u) }
        upper = u + size
        lower = lower - Page.itemIdSize
        if !(lower <= Page.headerSize) {
            nline -= 1
            for i in stride(from: 1, through: nline, by: 1) {
                let id = itemId(i)
                if id.offset <= offset { setItemId(i, ItemId(offset: id.offset + size, flags: id.flags, length: id.length)) }
            }
        }
    }

    /// PageIndexTupleDeleteNoCompact: remove an item's storage but keep the line pointer array
    /// (the pointer becomes unused, or goes away when it is the last).
    public func indexTupleDeleteNoCompact(_ offnum: Int) throws {
        try checkPointers("PageIndexTupleDeleteNoCompact")
        var nline = maxOffset
        let (offset, rawSize) = try checkItem("PageIndexTupleDeleteNoCompact", offnum)
        let size = Page.maxAlign(rawSize)
        if offnum < nline {
            setItemId(offnum, .unused)
        } else {
            lower = lower - Page.itemIdSize
            nline -= 1
        }
        let u = upper
        if offset > u { move(from: u, to: u + size, count: offset - u) }
        upper = u + size
        if !(lower <= Page.headerSize) {
            for i in stride(from: 1, through: nline, by: 1) {
                let id = itemId(i)
                if id.hasStorage && id.offset <= offset {
                    setItemId(i, ItemId(offset: id.offset + size, flags: id.flags, length: id.length))
                }
            }
        }
    }

    /// PageIndexMultiDelete: delete the items at `offsets` (ascending) and compact.
    public func indexMultiDelete(_ offsets: UnsafeBufferPointer<UInt16>) throws {
        if offsets.count <= 2 {
            for i in stride(from: offsets.count - 1, through: 0, by: -1) { try indexTupleDelete(Int(offsets[i])) }
            return
        }
        try checkPointers("PageIndexMultiDelete")
        let nline = maxOffset
        let s = special
        try withUnsafeTemporaryAllocation(of: CompactItem.self, capacity: max(nline, 1)) { items in
            try withUnsafeTemporaryAllocation(of: UInt32.self, capacity: max(nline, 1)) { newIds in
                var nused = 0, nextItem = 0, total = 0
                for offnum in stride(from: 1, through: nline, by: 1) {
                    let id = itemId(offnum)
                    let size = id.length, offset = id.offset
                    guard offset >= upper, offset + size <= s, offset == Page.maxAlign(offset) else {
                        throw RedoError.corruptPage("PageIndexMultiDelete: corrupted line pointer \(offnum): offset = \(offset), size = \(size)")
                    }
                    if nextItem < offsets.count && offnum == Int(offsets[nextItem]) {
                        nextItem += 1
                    } else {
                        items[nused] = CompactItem(index: nused, itemOffset: offset, alignedLength: Page.maxAlign(size))
                        total += Page.maxAlign(size)
                        newIds[nused] = id.raw
                        nused += 1
                    }
                }
                guard nextItem == offsets.count else {
                    throw RedoError.corruptPage("PageIndexMultiDelete: incorrect index offsets supplied")
                }
                guard total <= s - lower else {
                    throw RedoError.corruptPage("PageIndexMultiDelete: corrupted item lengths: total \(total), available space \(s - lower)")
                }
                for i in 0..<nused { setU32(itemIdOffset(i + 1), newIds[i]) }
                lower = Page.headerSize + nused * Page.itemIdSize
                if nused > 0 {
                    compactify(UnsafeMutableBufferPointer(rebasing: items[0..<nused]))
                } else {
                    upper = s
                }
            }
        }
    }

    /// PageIndexTupleOverwrite: replace an item in place, shifting the items below it when the
    /// aligned size changes. Throws when the new item does not fit.
    public func indexTupleOverwrite(_ offnum: Int, with item: UnsafeRawBufferPointer) throws {
        try checkPointers("PageIndexTupleOverwrite")
        let count = maxOffset
        let (offset, rawOld) = try checkItem("PageIndexTupleOverwrite", offnum)
        let oldSize = Page.maxAlign(rawOld)
        let newSize = Page.maxAlign(item.count)
        guard newSize <= oldSize + (upper - lower) else {
            throw RedoError.corruptPage("PageIndexTupleOverwrite: item of \(item.count) bytes does not fit at \(offnum)")
        }
        let diff = oldSize - newSize
        if diff != 0 {
            let u = upper
            move(from: u, to: u + diff, count: offset - u)
            upper = u + diff
            for i in stride(from: 1, through: count, by: 1) {
                let id = itemId(i)
                if id.hasStorage && id.offset <= offset {
                    setItemId(i, ItemId(offset: id.offset + diff, flags: id.flags, length: id.length))
                }
            }
        }
        let flags = itemId(offnum).flags
        setItemId(offnum, ItemId(offset: offset + diff, flags: flags, length: item.count))
        write(item, at: offset + diff)
    }

    /// PageRepairFragmentation: compact the storage of all items that have it, mark unused pointers
    /// unused, drop trailing unused pointers, and set or clear PD_HAS_FREE_LINES.
    public func repairFragmentation() throws {
        let l = lower, u = upper, s = special
        guard l >= Page.headerSize, l <= u, u <= s, s <= Page.size, s == Page.maxAlign(s) else {
            throw RedoError.corruptPage("PageRepairFragmentation: corrupted page pointers: lower = \(l), upper = \(u), special = \(s)")
        }
        let nline = maxOffset
        try withUnsafeTemporaryAllocation(of: CompactItem.self, capacity: max(nline, 1)) { items in
            var nstorage = 0, nunused = 0, total = 0, finalUsed = 0
            for i in stride(from: 1, through: nline, by: 1) {
                let id = itemId(i)
                if id.isUsed {
                    if id.hasStorage {
                        let off = id.offset
                        guard off >= u, off < s else {
                            throw RedoError.corruptPage("PageRepairFragmentation: corrupted line pointer: \(off)")
                        }
                        items[nstorage] = CompactItem(index: i - 1, itemOffset: off, alignedLength: Page.maxAlign(id.length))
                        total += Page.maxAlign(id.length)
                        nstorage += 1
                    }
                    finalUsed = i
                } else {
                    setItemId(i, .unused)
                    nunused += 1
                }
            }
            if nstorage == 0 {
                upper = s
            } else {
                guard total <= s - l else {
                    throw RedoError.corruptPage("PageRepairFragmentation: corrupted item lengths: total \(total), available space \(s - l)")
                }
                compactify(UnsafeMutableBufferPointer(rebasing: items[0..<nstorage]))
            }
            if finalUsed != nline {
                let unusedAtEnd = nline - finalUsed
                nunused -= unusedAtEnd
                lower = lower - Page.itemIdSize * unusedAtEnd
            }
            if nunused > 0 { setHasFreeLinePointers() } else { clearHasFreeLinePointers() }
        }
    }

    /// PageTruncateLinePointerArray: drop trailing unused line pointers (keeping at least one) and set
    /// PD_HAS_FREE_LINES when unused ones remain.
    public func truncateLinePointerArray() {
        var countDone = false, setHint = false, unusedAtEnd = 0
        var i = maxOffset
        while i >= 1 {
            let id = itemId(i)
            if !countDone && i > 1 {
                if !id.isUsed { unusedAtEnd += 1 } else { countDone = true }
            } else if !id.isUsed {
                setHint = true
                break
            }
            i -= 1
        }
        if unusedAtEnd > 0 { lower = lower - Page.itemIdSize * unusedAtEnd }
        if setHint { setHasFreeLinePointers() } else { clearHasFreeLinePointers() }
    }

    /// PageGetFreeSpace: room for one more item, less its line pointer.
    public var freeSpace: Int {
        let space = upper - lower
        return space < Page.itemIdSize ? 0 : space - Page.itemIdSize
    }

    /// PageGetExactFreeSpace.
    public var exactFreeSpace: Int { max(0, upper - lower) }

    /// PageGetHeapFreeSpace: like `freeSpace`, but 0 when no line pointer can be added.
    public var heapFreeSpace: Int {
        var space = freeSpace
        if space > 0 {
            let nline = maxOffset
            if nline >= Page.maxHeapTuplesPerPage {
                if hasFreeLinePointers {
                    var off = 1
                    while off <= nline && itemId(off).isUsed { off += 1 }
                    if off > nline { space = 0 }
                } else {
                    space = 0
                }
            }
        }
        return space
    }

    /// compactify_tuples: place `items` (given in line pointer order) against pd_special, the first
    /// at the top, and point their line pointers at the new places.
    func compactify(_ items: UnsafeMutableBufferPointer<CompactItem>) {
        withUnsafeTemporaryAllocation(byteCount: Page.size, alignment: 16) { scratch in
            let scratchBase = scratch.baseAddress!
            // Copy the whole tuple area once; every item is then placed from the copy.
            let u = upper
            scratchBase.advanced(by: u).copyMemory(from: base + u, byteCount: Page.size - u)
            var newUpper = special
            for item in items {
                newUpper -= item.alignedLength
                (base + newUpper).copyMemory(from: scratchBase + item.itemOffset, byteCount: item.alignedLength)
                let lpOffset = itemIdOffset(item.index + 1)
                let id = ItemId(raw: u32(lpOffset))
                setU32(lpOffset, ItemId(offset: newUpper, flags: id.flags, length: id.length).raw)
            }
            upper = newUpper
        }
    }
}

/// itemIdCompactData: an item to be placed by `compactify`.
struct CompactItem {
    /// Zero-based index of its line pointer.
    var index: Int
    var itemOffset: Int
    var alignedLength: Int
}

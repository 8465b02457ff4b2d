import Foundation
import Hummingbird
import LSM
import PostgresWAL

/// The management API (contract: ../shared/contract.md, "HTTP management API"). JSON bodies, LSNs as
/// strings, errors as `{"msg": ...}` with 400 (bad input), 404 (unknown tenant/timeline) or 409
/// (conflict). Slow work (attach, checkpoint) runs on a worker thread, never on the event loop.
struct HTTPAPI {
    let repository: Repository

    func makeRouter() -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/v1/status") { _, _ in json(200, ["id": "pageserver", "status": "ok"]) }
        router.get("/metrics") { _, _ in
            repository.updateGauges()
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: repository.metrics.render())))
        }
        router.get("/v1/tenant") { _, _ in
            json(200, repository.tenantIds().map { ["id": "\($0)"] })
        }
        router.post("/v1/tenant") { req, ctx in
            await handle {
                let body = try await jsonBody(req, ctx)
                let id = try tenantId(body["new_tenant_id"], field: "new_tenant_id")
                guard try repository.createTenant(id) else { throw APIError.conflict("tenant \(id) already exists") }
                return json(201, ["id": "\(id)"])
            }
        }
        router.get("/v1/tenant/:tenant_id/timeline") { _, ctx in
            await handle {
                let t = try tenantId(ctx.parameters.get("tenant_id"), field: "tenant_id")
                return json(200, try repository.timelines(of: t).map { $0.json() })
            }
        }
        router.post("/v1/tenant/:tenant_id/timeline") { req, ctx in
            await handle {
                let t = try tenantId(ctx.parameters.get("tenant_id"), field: "tenant_id")
                let body = try await jsonBody(req, ctx)
                let id = try timelineId(body["new_timeline_id"], field: "new_timeline_id")
                if let source = body["wal_source"] {
                    guard let conninfo = source as? String, !conninfo.isEmpty else { throw APIError.badRequest("wal_source must be a connection string") }
                    let timeline = try await blocking { try TimelineAttach.attach(repository: repository, tenant: t, timeline: id, walSource: conninfo) }
                    return json(201, timeline.json())
                }
                if let a = body["ancestor_timeline_id"] {
                    let ancestor = try timelineId(a, field: "ancestor_timeline_id")
                    var start: LSN?
                    if let v = body["ancestor_start_lsn"], !(v is NSNull) {
                        guard let text = v as? String, let l = LSN(parsing: text) else {
                            throw APIError.badRequest("ancestor_start_lsn must be an LSN like 0/16B3748")
                        }
                        start = l
                    }
                    let at = start
                    let timeline = try await blocking {
                        try TimelineBranch.create(repository: repository, tenant: t, timeline: id, ancestor: ancestor, startLSN: at)
                    }
                    return json(201, timeline.json())
                }
                throw APIError.badRequest("give either wal_source (attach to a primary) or ancestor_timeline_id (branch)")
            }
        }
        router.get("/v1/tenant/:tenant_id/timeline/:timeline_id") { _, ctx in
            await handle { json(200, try timeline(ctx).json()) }
        }
        router.put("/v1/tenant/:tenant_id/timeline/:timeline_id/wal_source") { req, ctx in
            await handle {
                let tl = try timeline(ctx)
                let body = try await jsonBody(req, ctx)
                guard let conninfo = body["wal_source"] as? String, !conninfo.isEmpty else {
                    throw APIError.badRequest("wal_source must be a connection string")
                }
                let updated = try await blocking { try TimelineBranch.setWalSource(repository: repository, timeline: tl, conninfo: conninfo) }
                return json(200, updated.json())
            }
        }
        router.delete("/v1/tenant/:tenant_id/timeline/:timeline_id") { _, ctx in
            await handle {
                let tl = try timeline(ctx)
                let slot = try await blocking { try TimelineBranch.delete(repository: repository, timeline: tl) }
                return json(200, ["tenant_id": "\(tl.tenantId)", "timeline_id": "\(tl.timelineId)", "deleted": true,
                                  "replication_slot": slot as Any? ?? NSNull()])
            }
        }
        // Compaction now: flush what was ingested, then image layers and delta merges.
        router.put("/v1/tenant/:tenant_id/timeline/:timeline_id/compact") { _, ctx in
            await handle {
                let tl = try timeline(ctx)
                let summary = try await blocking { () -> String in
                    try tl.store.checkpointAtRecordBoundary()
                    let r = try tl.maintenance.compact()
                    return jsonText(["image_layers_created": r.images.layersCreated, "image_bytes_written": r.images.bytesWritten,
                                     "layers_merged": r.merges.layersDeleted, "merged_layers_created": r.merges.layersCreated,
                                     "merge_bytes_written": r.merges.bytesWritten,
                                     "bytes_deleted": r.images.bytesDeleted + r.merges.bytesDeleted,
                                     "max_delta_depth_after": r.depthAfter.maxDeltas, "layer_files": tl.store.layers().count])
                }
                return rawJSON(200, summary)
            }
        }
        router.put("/v1/tenant/:tenant_id/timeline/:timeline_id/do_gc") { req, ctx in
            await handle {
                let tl = try timeline(ctx)
                var requested: LSN?
                if let s = req.uri.queryParameters.get("cutoff") {
                    guard let l = LSN(parsing: s) else { throw APIError.badRequest("cutoff '\(s)' is not an LSN like 0/16B3748") }
                    requested = l
                }
                let at = requested
                let summary = try await blocking { () -> String in
                    let r = try tl.maintenance.gc(cutoff: at)
                    return jsonText(["previous_cutoff": "\(r.previousCutoff)", "cutoff": "\(r.cutoff)",
                                     "retained_lsns": r.retained.map { "\($0)" }, "layers_deleted": r.layersDeleted,
                                     "bytes_deleted": r.bytesDeleted, "layers_trimmed": r.layersTrimmed,
                                     "bytes_written": r.bytesWritten, "layer_files": tl.store.layers().count])
                }
                return rawJSON(200, summary)
            }
        }
        router.put("/v1/tenant/:tenant_id/timeline/:timeline_id/checkpoint") { _, ctx in
            await handle {
                let tl = try timeline(ctx)
                let lsn = try await blocking { try tl.store.checkpointAtRecordBoundary() }
                return json(200, ["disk_consistent_lsn": "\(lsn)", "last_record_lsn": "\(tl.store.lastRecordLSN)"])
            }
        }
        router.get("/v1/tenant/:tenant_id/timeline/:timeline_id/layer") { _, ctx in
            await handle {
                let tl = try timeline(ctx)
                let layers: [[String: Any]] = tl.store.layers().map { l in
                    let d = l.descriptor
                    return ["kind": d.kind.description, "chunk": "\(d.chunk)", "file_name": d.fileName,
                            "lsn_start": "\(d.lsnStart)", "lsn_end": "\(d.lsnEnd)", "file_size": l.fileSize]
                }
                return json(200, ["layers": layers, "count": layers.count,
                                  "total_bytes": tl.store.layers().reduce(UInt64(0)) { $0 + $1.fileSize }])
            }
        }
        router.get("/v1/tenant/:tenant_id/timeline/:timeline_id/get_lsn_by_timestamp") { req, ctx in
            await handle { json(200, try await CommitTimestampSearch.answer(timeline: try timeline(ctx), timestampParameter: req.uri.queryParameters.get("timestamp"))) }
        }
        // Extension of the contract: every relation fork and its size in blocks at an LSN (default
        // last_record_lsn), from the DbDir, RelDir and size keys.
        router.get("/v1/tenant/:tenant_id/timeline/:timeline_id/relations") { req, ctx in
            await handle {
                let tl = try timeline(ctx)
                var lsn = tl.store.lastRecordLSN
                if let s = req.uri.queryParameters.get("lsn") {
                    guard let l = LSN(parsing: s) else { throw APIError.badRequest("lsn '\(s)' is not an LSN like 0/16B3748") }
                    lsn = l
                }
                let at = lsn
                let rels = try await blocking { try RelationCatalog(store: tl.store).relations(at: at) }
                return json(200, ["lsn": "\(at)", "relations": rels.map { ["spc": $0.tag.spc, "db": $0.tag.db, "rel": $0.tag.rel,
                                                                         "fork": $0.tag.fork, "nblocks": $0.nblocks] }])
            }
        }
        // Extension: the verify_redo report (see RedoVerification). `?wait=SECONDS` first waits
        // until every record queued so far is checked.
        router.get("/v1/tenant/:tenant_id/timeline/:timeline_id/redo_verification") { req, ctx in
            await handle {
                let tl = try timeline(ctx)
                guard let v = tl.verification else { return json(200, ["enabled": false]) }
                if let w = req.uri.queryParameters.get("wait"), let seconds = Double(w) {
                    _ = try await blocking { v.drain(timeoutSeconds: min(seconds, 600)) }
                }
                return json(200, v.json())
            }
        }
        // Extension: one page as our redo builds it, raw 8192 bytes.
        // `?rel=SPC/DB/REL[/FORK]&blk=N[&lsn=LSN]` (default LSN: last_record_lsn).
        router.get("/v1/tenant/:tenant_id/timeline/:timeline_id/page") { req, ctx in
            await handle {
                let tl = try timeline(ctx)
                let q = req.uri.queryParameters
                guard let relText = q.get("rel") else { throw APIError.badRequest("rel=SPC/DB/REL[/FORK] is required") }
                let parts = relText.split(separator: "/").map { UInt32($0) }
                guard parts.count == 3 || parts.count == 4, parts.allSatisfy({ $0 != nil }), (parts.count == 3 || parts[3]! <= 3) else {
                    throw APIError.badRequest("rel '\(relText)' is not SPC/DB/REL[/FORK] (fork 0 main, 1 fsm, 2 vm, 3 init)")
                }
                guard let blkText = q.get("blk"), let blk = UInt32(blkText), blk != UInt32.max else { throw APIError.badRequest("blk=N is required") }
                var lsn = tl.store.lastRecordLSN
                if let s = q.get("lsn") {
                    guard let l = LSN(parsing: s) else { throw APIError.badRequest("lsn '\(s)' is not an LSN like 0/16B3748") }
                    lsn = l
                }
                let tag = RelTag(spc: parts[0]!, db: parts[1]!, rel: parts[2]!, fork: UInt8(parts.count == 4 ? parts[3]! : 0))
                let at = lsn
                let page = try await blocking { try tl.store.get(KeySpace.relationBlock(tag, blk), at: at, redo: tl.redo) }
                guard let page else { throw APIError.notFound("block \(blk) of \(tag) has no value at \(at)") }
                var headers = HTTPFields()
                headers[.contentType] = "application/octet-stream"
                return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: page)))
            }
        }
        return router
    }

    private func timeline(_ ctx: BasicRequestContext) throws -> Timeline {
        let t = try tenantId(ctx.parameters.get("tenant_id"), field: "tenant_id")
        let tl = try timelineId(ctx.parameters.get("timeline_id"), field: "timeline_id")
        return try repository.timeline(t, tl)
    }
}

func tenantId(_ v: Any?, field: String) throws -> TenantId {
    guard let s = v as? String else { throw APIError.badRequest("\(field) is required (32 lowercase hex characters)") }
    guard let id = TenantId(parsing: s) else { throw APIError.badRequest("\(field) '\(s)' is not 32 lowercase hex characters") }
    return id
}

func timelineId(_ v: Any?, field: String) throws -> TimelineId {
    guard let s = v as? String else { throw APIError.badRequest("\(field) is required (32 lowercase hex characters)") }
    guard let id = TimelineId(parsing: s) else { throw APIError.badRequest("\(field) '\(s)' is not 32 lowercase hex characters") }
    return id
}

/// JSON text of `object` (sorted keys), for work done off the event loop.
func jsonText(_ object: Any) -> String {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
    return String(decoding: data, as: UTF8.self)
}

func rawJSON(_ status: Int, _ text: String) -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "application/json"
    return Response(status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
}

func json(_ status: Int, _ object: Any) -> Response {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
    var headers = HTTPFields()
    headers[.contentType] = "application/json"
    return Response(status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
}

/// Runs `body`, turning thrown errors into JSON error responses.
func handle(_ body: () async throws -> Response) async -> Response {
    do {
        return try await body()
    } catch let e as APIError {
        return json(e.status, ["msg": e.message])
    } catch let e as StorageError {
        let status = e.code == .notFound ? 404 : e.code == .invalidArgument ? 400 : 500
        return json(status, ["msg": e.description])
    } catch {
        return json(500, ["msg": "\(error)"])
    }
}

func jsonBody(_ req: Request, _ ctx: BasicRequestContext) async throws -> [String: Any] {
    let buffer: ByteBuffer
    do { buffer = try await req.body.collect(upTo: 1 << 20) } catch {
        throw APIError.badRequest("request body is too large or unreadable")
    }
    let bytes = Data(buffer.readableBytesView)
    if bytes.isEmpty { return [:] }
    guard let obj = try? JSONSerialization.jsonObject(with: bytes), let dict = obj as? [String: Any] else {
        throw APIError.badRequest("request body is not a JSON object")
    }
    return dict
}

/// Runs blocking work on a thread of its own and awaits it.
func blocking<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { cont in
        Thread.detachNewThread {
            do { cont.resume(returning: try work()) } catch { cont.resume(throwing: error) }
        }
    }
}

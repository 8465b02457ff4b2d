import WireProtocol

extension PageServiceSession {
    func startBackup(_ command: String, _ args: [String], _ connection: PGServerConnection) {
        fail(connection, "\(command) is not available yet", code: "0A000")
    }
}

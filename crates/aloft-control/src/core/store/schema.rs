//! The store's schema: numbered migrations, applied in order, each once.

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
     INSERT INTO meta (key, value) VALUES ('revision', 0);
     CREATE TABLE orgs (slug TEXT PRIMARY KEY, name TEXT NOT NULL);
     CREATE TABLE tokens (hash BLOB PRIMARY KEY, kind TEXT NOT NULL, app TEXT, created_at TEXT NOT NULL);
     CREATE TABLE apps (name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, org_slug TEXT NOT NULL REFERENCES orgs(slug),
                        network TEXT NOT NULL, created_at TEXT NOT NULL);
     CREATE TABLE hosts (id TEXT PRIMARY KEY, region TEXT NOT NULL, address TEXT NOT NULL, cpus INTEGER NOT NULL,
                         memory_mb INTEGER NOT NULL, last_heartbeat TEXT NOT NULL);
     CREATE TABLE machines (
        id TEXT PRIMARY KEY, app TEXT NOT NULL, name TEXT NOT NULL, region TEXT NOT NULL, host_id TEXT NOT NULL,
        state TEXT NOT NULL, desired_state TEXT NOT NULL, instance_id TEXT NOT NULL, version TEXT NOT NULL,
        private_ip TEXT NOT NULL, config TEXT NOT NULL, image_ref TEXT NOT NULL, cpus INTEGER NOT NULL,
        memory_mb INTEGER NOT NULL, checks TEXT NOT NULL DEFAULT '[]', restart_seq INTEGER NOT NULL DEFAULT 0,
        signal_seq INTEGER NOT NULL DEFAULT 0, signal TEXT, stop_signal TEXT, stop_timeout INTEGER,
        cordoned INTEGER NOT NULL DEFAULT 0, lease_nonce TEXT, lease_expires_at INTEGER, lease_owner TEXT,
        lease_description TEXT, lease_version TEXT, revision INTEGER NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
     CREATE INDEX machines_by_app ON machines (app, state);
     CREATE INDEX machines_by_host ON machines (host_id, revision);
     CREATE TABLE machine_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, machine_id TEXT NOT NULL,
        kind TEXT NOT NULL, status TEXT NOT NULL, source TEXT NOT NULL, timestamp INTEGER NOT NULL, request TEXT);
     CREATE INDEX machine_events_by_machine ON machine_events (machine_id, seq);
     CREATE TABLE machine_versions (machine_id TEXT NOT NULL, version TEXT NOT NULL, config TEXT NOT NULL,
        created_at TEXT NOT NULL, PRIMARY KEY (machine_id, version));",
    // 2: releases and encrypted secrets.
    "CREATE TABLE releases (app TEXT NOT NULL, version INTEGER NOT NULL, image TEXT NOT NULL, configs TEXT NOT NULL,
        strategy TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, description TEXT NOT NULL, user TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (app, version));
     CREATE TABLE secrets (app TEXT NOT NULL, name TEXT NOT NULL, nonce BLOB NOT NULL, ciphertext BLOB NOT NULL,
        digest TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (app, name));",
    // 3: the secret each host's agent API (exec, logs) accepts.
    "CREATE TABLE host_secrets (host_id TEXT PRIMARY KEY, secret TEXT NOT NULL);",
    // 4: an app's releases and secrets go with it (a new app of the same name starts empty).
    "CREATE TRIGGER apps_delete_releases_secrets AFTER DELETE ON apps BEGIN
        DELETE FROM releases WHERE app = OLD.name;
        DELETE FROM secrets WHERE app = OLD.name;
     END;",
    // 5: regions: each host's stable index and mesh identity; per-app autoscaling policies.
    "ALTER TABLE hosts ADD COLUMN host_index INTEGER;
     ALTER TABLE hosts ADD COLUMN mesh_public_key TEXT;
     ALTER TABLE hosts ADD COLUMN mesh_endpoint TEXT;
     UPDATE hosts SET host_index = (SELECT count(*) FROM hosts h WHERE h.id <= hosts.id);
     CREATE UNIQUE INDEX hosts_by_index ON hosts (host_index);
     INSERT INTO meta (key, value) VALUES ('host_index_high', (SELECT coalesce(max(host_index), 0) FROM hosts));
     CREATE TABLE autoscale (app TEXT PRIMARY KEY, policy TEXT NOT NULL, updated_at TEXT NOT NULL);
     CREATE TRIGGER apps_delete_autoscale AFTER DELETE ON apps BEGIN
        DELETE FROM autoscale WHERE app = OLD.name;
     END;",
    // 6: the public addresses of each host's edge (GeoDNS answers), comma-separated.
    "ALTER TABLE hosts ADD COLUMN edge_addresses TEXT NOT NULL DEFAULT '';",
    // 7: a certificate's hostname belongs to an app (edges route it there) and goes with it.
    // The tables were created on first use before, so they may not exist yet.
    "CREATE TABLE IF NOT EXISTS edge_certificates (hostname TEXT PRIMARY KEY, certificate TEXT NOT NULL,
        private_key TEXT NOT NULL, fingerprint TEXT NOT NULL, created_at TEXT NOT NULL);
     ALTER TABLE edge_certificates ADD COLUMN app TEXT;
     CREATE TABLE IF NOT EXISTS acme_certificates (hostname TEXT PRIMARY KEY, status TEXT NOT NULL,
        challenge TEXT, error TEXT, certificate TEXT, key_nonce BLOB, key_sealed BLOB,
        fingerprint TEXT NOT NULL DEFAULT '', not_after INTEGER, created_at TEXT NOT NULL,
        updated_at INTEGER NOT NULL);
     ALTER TABLE acme_certificates ADD COLUMN app TEXT;
     CREATE TRIGGER apps_delete_certificates AFTER DELETE ON apps BEGIN
        DELETE FROM edge_certificates WHERE app = OLD.name;
        DELETE FROM acme_certificates WHERE app = OLD.name;
     END;",
    // 8: dedicated public addresses of apps (the ips service); an app's are freed when it is deleted
    // (by the trigger, inside the app's delete transaction).
    "CREATE TABLE IF NOT EXISTS app_ips (address TEXT PRIMARY KEY, app TEXT NOT NULL,
        kind TEXT NOT NULL, created_at TEXT NOT NULL);
     CREATE INDEX IF NOT EXISTS app_ips_by_app ON app_ips (app);
     CREATE TRIGGER IF NOT EXISTS apps_delete_ips AFTER DELETE ON apps BEGIN
        DELETE FROM app_ips WHERE app = OLD.name;
     END;",
    // 9: ACME account credentials per directory (sealed), created on first use before.
    "CREATE TABLE IF NOT EXISTS acme_accounts (directory TEXT PRIMARY KEY, nonce BLOB NOT NULL,
        sealed BLOB NOT NULL);",
    // 10: per-host credentials (hashed, one per host), join tokens that expire or run out of
    // uses, hosts revoked by the operator, and drained hosts (no new placements).
    "CREATE TABLE IF NOT EXISTS host_credentials (host_id TEXT PRIMARY KEY, hash BLOB NOT NULL UNIQUE,
        created_at TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS join_tokens (hash BLOB PRIMARY KEY, expires_at INTEGER, uses_left INTEGER,
        created_at TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS host_flags (host_id TEXT PRIMARY KEY, revoked INTEGER NOT NULL DEFAULT 0,
        draining INTEGER NOT NULL DEFAULT 0);",
    // 11: tokens get an id, an organisation, an expiry (existing ones: 20 years from now), a
    // note and when they were last used; orgs remember when they were made.
    "ALTER TABLE tokens ADD COLUMN id TEXT;
     ALTER TABLE tokens ADD COLUMN org TEXT;
     ALTER TABLE tokens ADD COLUMN expires_at INTEGER;
     ALTER TABLE tokens ADD COLUMN last_used_at INTEGER;
     ALTER TABLE tokens ADD COLUMN name TEXT NOT NULL DEFAULT '';
     UPDATE tokens SET id = lower(hex(substr(hash, 1, 8))) WHERE id IS NULL;
     UPDATE tokens SET expires_at = CAST(strftime('%s', 'now') AS INTEGER) + 631152000
        WHERE expires_at IS NULL;
     CREATE UNIQUE INDEX tokens_by_id ON tokens (id);
     ALTER TABLE orgs ADD COLUMN created_at TEXT NOT NULL DEFAULT '';",
    // 12: a custom hostname routes only once its control is proven (names claimed before stay
    // routed); a user certificate's key is sealed (`key_nonce`, `key_sealed`; `private_key`
    // is emptied when the server seals the key on start).
    "ALTER TABLE edge_certificates ADD COLUMN verified INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE edge_certificates ADD COLUMN key_nonce BLOB;
     ALTER TABLE edge_certificates ADD COLUMN key_sealed BLOB;
     ALTER TABLE acme_certificates ADD COLUMN verified INTEGER NOT NULL DEFAULT 1;",
    // 13: deploys run by the control plane: each one's state (JSON), stored after every step.
    "CREATE TABLE IF NOT EXISTS deploys (id TEXT PRIMARY KEY, app TEXT NOT NULL, version INTEGER NOT NULL,
        status TEXT NOT NULL, state TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
     CREATE INDEX IF NOT EXISTS deploys_by_app ON deploys (app, status);
     CREATE TRIGGER IF NOT EXISTS apps_delete_deploys AFTER DELETE ON apps BEGIN
        DELETE FROM deploys WHERE app = OLD.name;
     END;",
];

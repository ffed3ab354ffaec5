-- What the Rust service adds to the original schema: admin flag, optional and
-- case-insensitively unique emails, case-insensitively unique usernames, redirect URIs,
-- refresh-token families, authorization codes and the shared signing-key set.
--
-- SQLite cannot drop a NOT NULL constraint, so `users` is rebuilt. Dropping `users` while
-- `refresh_tokens` and `audit_logs` reference it would fire their ON DELETE actions, so
-- those two are copied aside and rebuilt after it. The original stored naive timestamps
-- (`2024-01-02 03:04:05.123456`); they are rewritten to our fixed-width RFC 3339 UTC form
-- (`2024-01-02T03:04:05.123456Z`) so that comparing the text compares the instants.

CREATE TABLE _old_refresh_tokens AS SELECT * FROM refresh_tokens;
CREATE TABLE _old_audit_logs AS SELECT * FROM audit_logs;
DROP TABLE refresh_tokens;
DROP TABLE audit_logs;

CREATE TABLE _new_users (
    id VARCHAR(36) NOT NULL,
    username VARCHAR(255) NOT NULL,
    email VARCHAR(255),
    password_hash VARCHAR(255) NOT NULL,
    is_active BOOLEAN NOT NULL,
    is_verified BOOLEAN NOT NULL,
    created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL,
    last_login_at DATETIME,
    is_admin BOOLEAN NOT NULL DEFAULT 0,
    PRIMARY KEY (id)
);
INSERT INTO _new_users (id, username, email, password_hash, is_active, is_verified,
                        created_at, updated_at, last_login_at, is_admin)
SELECT id, username, lower(email), password_hash, is_active, is_verified,
       CASE WHEN created_at LIKE '____-__-__ __:__:__.______' THEN substr(created_at, 1, 10) || 'T' || substr(created_at, 12) || 'Z' WHEN created_at LIKE '____-__-__ __:__:__' THEN substr(created_at, 1, 10) || 'T' || substr(created_at, 12) || '.000000Z' ELSE created_at END, CASE WHEN updated_at LIKE '____-__-__ __:__:__.______' THEN substr(updated_at, 1, 10) || 'T' || substr(updated_at, 12) || 'Z' WHEN updated_at LIKE '____-__-__ __:__:__' THEN substr(updated_at, 1, 10) || 'T' || substr(updated_at, 12) || '.000000Z' ELSE updated_at END, CASE WHEN last_login_at LIKE '____-__-__ __:__:__.______' THEN substr(last_login_at, 1, 10) || 'T' || substr(last_login_at, 12) || 'Z' WHEN last_login_at LIKE '____-__-__ __:__:__' THEN substr(last_login_at, 1, 10) || 'T' || substr(last_login_at, 12) || '.000000Z' ELSE last_login_at END, 0
FROM users;
DROP TABLE users;
ALTER TABLE _new_users RENAME TO users;
CREATE UNIQUE INDEX ix_users_username ON users (username);
CREATE UNIQUE INDEX ix_users_email ON users (email);
CREATE INDEX ix_users_is_active ON users (is_active);
-- An adopted database holding both "Bob" and "bob" fails here, on purpose: one login name
-- must not match two accounts.
CREATE UNIQUE INDEX ux_users_username_lower ON users (lower(username));
CREATE UNIQUE INDEX ux_users_email_lower ON users (lower(email));

ALTER TABLE oauth_clients ADD COLUMN redirect_uris TEXT NOT NULL DEFAULT '[]';
UPDATE oauth_clients SET created_at = CASE WHEN created_at LIKE '____-__-__ __:__:__.______' THEN substr(created_at, 1, 10) || 'T' || substr(created_at, 12) || 'Z' WHEN created_at LIKE '____-__-__ __:__:__' THEN substr(created_at, 1, 10) || 'T' || substr(created_at, 12) || '.000000Z' ELSE created_at END, updated_at = CASE WHEN updated_at LIKE '____-__-__ __:__:__.______' THEN substr(updated_at, 1, 10) || 'T' || substr(updated_at, 12) || 'Z' WHEN updated_at LIKE '____-__-__ __:__:__' THEN substr(updated_at, 1, 10) || 'T' || substr(updated_at, 12) || '.000000Z' ELSE updated_at END;

CREATE TABLE refresh_tokens (
    id VARCHAR(36) NOT NULL,
    jti_hash VARCHAR(64) NOT NULL,
    user_id VARCHAR(36) NOT NULL,
    client_id VARCHAR(255) NOT NULL,
    scope TEXT NOT NULL,
    expires_at DATETIME NOT NULL,
    revoked BOOLEAN NOT NULL,
    revoked_at DATETIME,
    parent_jti_hash VARCHAR(64),
    created_at DATETIME NOT NULL,
    family_id VARCHAR(64) NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE,
    FOREIGN KEY (client_id) REFERENCES oauth_clients (client_id) ON DELETE CASCADE
);
-- A family is named after the first token of its rotation chain: walk the original's
-- parent links down from each root. The original never enabled foreign keys on SQLite, so
-- rows pointing at a missing user or client are dropped rather than failing the migration.
WITH RECURSIVE chain (jti_hash, root) AS (
    SELECT t.jti_hash, t.jti_hash
    FROM _old_refresh_tokens t
    WHERE t.parent_jti_hash IS NULL
       OR NOT EXISTS (SELECT 1 FROM _old_refresh_tokens p WHERE p.jti_hash = t.parent_jti_hash)
    UNION
    SELECT child.jti_hash, chain.root
    FROM _old_refresh_tokens child
    JOIN chain ON child.parent_jti_hash = chain.jti_hash
)
INSERT INTO refresh_tokens (id, jti_hash, user_id, client_id, scope, expires_at, revoked,
                            revoked_at, parent_jti_hash, created_at, family_id)
SELECT o.id, o.jti_hash, o.user_id, o.client_id, o.scope, CASE WHEN o.expires_at LIKE '____-__-__ __:__:__.______' THEN substr(o.expires_at, 1, 10) || 'T' || substr(o.expires_at, 12) || 'Z' WHEN o.expires_at LIKE '____-__-__ __:__:__' THEN substr(o.expires_at, 1, 10) || 'T' || substr(o.expires_at, 12) || '.000000Z' ELSE o.expires_at END, o.revoked,
       CASE WHEN o.revoked_at LIKE '____-__-__ __:__:__.______' THEN substr(o.revoked_at, 1, 10) || 'T' || substr(o.revoked_at, 12) || 'Z' WHEN o.revoked_at LIKE '____-__-__ __:__:__' THEN substr(o.revoked_at, 1, 10) || 'T' || substr(o.revoked_at, 12) || '.000000Z' ELSE o.revoked_at END, o.parent_jti_hash, CASE WHEN o.created_at LIKE '____-__-__ __:__:__.______' THEN substr(o.created_at, 1, 10) || 'T' || substr(o.created_at, 12) || 'Z' WHEN o.created_at LIKE '____-__-__ __:__:__' THEN substr(o.created_at, 1, 10) || 'T' || substr(o.created_at, 12) || '.000000Z' ELSE o.created_at END,
       COALESCE((SELECT chain.root FROM chain WHERE chain.jti_hash = o.jti_hash LIMIT 1), o.jti_hash)
FROM _old_refresh_tokens o
WHERE o.user_id IN (SELECT id FROM users)
  AND o.client_id IN (SELECT client_id FROM oauth_clients);
CREATE UNIQUE INDEX ix_refresh_tokens_jti_hash ON refresh_tokens (jti_hash);
CREATE INDEX ix_refresh_tokens_user_id ON refresh_tokens (user_id);
CREATE INDEX ix_refresh_tokens_client_id ON refresh_tokens (client_id);
CREATE INDEX ix_refresh_tokens_expires_at ON refresh_tokens (expires_at);
CREATE INDEX ix_refresh_tokens_revoked ON refresh_tokens (revoked);
CREATE INDEX ix_refresh_tokens_family_id ON refresh_tokens (family_id);

CREATE TABLE audit_logs (
    id VARCHAR(36) NOT NULL,
    user_id VARCHAR(36),
    client_id VARCHAR(255),
    event_type VARCHAR(50) NOT NULL,
    event_data JSON,
    ip_address VARCHAR(45),
    user_agent TEXT,
    success BOOLEAN NOT NULL,
    error_message TEXT,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE SET NULL
);
INSERT INTO audit_logs (id, user_id, client_id, event_type, event_data, ip_address, user_agent,
                        success, error_message, created_at)
SELECT id, CASE WHEN user_id IN (SELECT id FROM users) THEN user_id END, client_id, event_type,
       event_data, ip_address, user_agent, success, error_message, CASE WHEN created_at LIKE '____-__-__ __:__:__.______' THEN substr(created_at, 1, 10) || 'T' || substr(created_at, 12) || 'Z' WHEN created_at LIKE '____-__-__ __:__:__' THEN substr(created_at, 1, 10) || 'T' || substr(created_at, 12) || '.000000Z' ELSE created_at END
FROM _old_audit_logs;
CREATE INDEX ix_audit_logs_user_id ON audit_logs (user_id);
CREATE INDEX ix_audit_logs_event_type ON audit_logs (event_type);
CREATE INDEX ix_audit_logs_success ON audit_logs (success);
CREATE INDEX ix_audit_logs_created_at ON audit_logs (created_at);

DROP TABLE _old_refresh_tokens;
DROP TABLE _old_audit_logs;

CREATE TABLE authorization_codes (
    code_hash VARCHAR(64) NOT NULL,
    client_id VARCHAR(255) NOT NULL,
    user_id VARCHAR(36) NOT NULL,
    redirect_uri TEXT NOT NULL,
    scope TEXT NOT NULL,
    code_challenge VARCHAR(128) NOT NULL,
    expires_at DATETIME NOT NULL,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (code_hash),
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE,
    FOREIGN KEY (client_id) REFERENCES oauth_clients (client_id) ON DELETE CASCADE
);
CREATE INDEX ix_authorization_codes_expires_at ON authorization_codes (expires_at);

CREATE TABLE signing_keys (
    kid VARCHAR(255) NOT NULL,
    private_key_pem TEXT NOT NULL,
    public_key_pem TEXT NOT NULL,
    created_at DATETIME NOT NULL,
    retired_at DATETIME,
    publish_until DATETIME,
    PRIMARY KEY (kid)
);

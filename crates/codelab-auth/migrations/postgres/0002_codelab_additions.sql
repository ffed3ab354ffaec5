-- What the Rust service adds to the original schema: admin flag, optional and
-- case-insensitively unique emails, case-insensitively unique usernames, redirect URIs,
-- refresh-token families, authorization codes and the shared signing-key set.

ALTER TABLE users ADD COLUMN IF NOT EXISTS is_admin BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE users ALTER COLUMN email DROP NOT NULL;
-- Emails are compared lower-cased from now on; the original stored them as typed.
UPDATE users SET email = lower(email) WHERE email <> lower(email);
-- An adopted database holding both "Bob" and "bob" fails here, on purpose: one login name
-- must not match two accounts.
CREATE UNIQUE INDEX IF NOT EXISTS ux_users_username_lower ON users (lower(username));
CREATE UNIQUE INDEX IF NOT EXISTS ux_users_email_lower ON users (lower(email));

ALTER TABLE oauth_clients ADD COLUMN IF NOT EXISTS redirect_uris TEXT NOT NULL DEFAULT '[]';

ALTER TABLE refresh_tokens ADD COLUMN IF NOT EXISTS family_id VARCHAR(64);
-- A family is named after the first token of its rotation chain: walk the original's
-- parent links down from each root.
WITH RECURSIVE chain (jti_hash, root) AS (
    SELECT t.jti_hash, t.jti_hash
    FROM refresh_tokens t
    WHERE t.parent_jti_hash IS NULL
       OR NOT EXISTS (SELECT 1 FROM refresh_tokens p WHERE p.jti_hash = t.parent_jti_hash)
    UNION
    SELECT child.jti_hash, chain.root
    FROM refresh_tokens child
    JOIN chain ON child.parent_jti_hash = chain.jti_hash
)
UPDATE refresh_tokens
SET family_id = COALESCE((SELECT chain.root FROM chain WHERE chain.jti_hash = refresh_tokens.jti_hash LIMIT 1), refresh_tokens.jti_hash)
WHERE family_id IS NULL;
ALTER TABLE refresh_tokens ALTER COLUMN family_id SET NOT NULL;
CREATE INDEX IF NOT EXISTS ix_refresh_tokens_family_id ON refresh_tokens (family_id);

CREATE TABLE IF NOT EXISTS authorization_codes (
    code_hash VARCHAR(64) NOT NULL,
    client_id VARCHAR(255) NOT NULL,
    user_id VARCHAR(36) NOT NULL,
    redirect_uri TEXT NOT NULL,
    scope TEXT NOT NULL,
    code_challenge VARCHAR(128) NOT NULL,
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (code_hash),
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE,
    FOREIGN KEY (client_id) REFERENCES oauth_clients (client_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS ix_authorization_codes_expires_at ON authorization_codes (expires_at);

CREATE TABLE IF NOT EXISTS signing_keys (
    kid VARCHAR(255) NOT NULL,
    private_key_pem TEXT NOT NULL,
    public_key_pem TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    retired_at TIMESTAMP WITH TIME ZONE,
    publish_until TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (kid)
);

-- LearnFlow: detected learning struggles, for teacher notification.
CREATE TABLE IF NOT EXISTS struggle_alerts (
    id             SERIAL PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    topic          VARCHAR(255) NOT NULL,
    error_pattern  TEXT,
    first_detected TIMESTAMP DEFAULT NOW(),
    resolved_at    TIMESTAMP,
    notified       BOOLEAN DEFAULT FALSE
);

CREATE INDEX IF NOT EXISTS idx_struggle_user_id ON struggle_alerts (user_id);
CREATE INDEX IF NOT EXISTS idx_struggle_topic ON struggle_alerts (topic);
-- A plain B-tree index: unresolved alerts (NULL resolved_at) are indexed too.
CREATE INDEX IF NOT EXISTS idx_struggle_resolved ON struggle_alerts (resolved_at);
CREATE INDEX IF NOT EXISTS idx_struggle_notified ON struggle_alerts (notified) WHERE notified = FALSE;

-- Schema of Tether 0.1.0 as shipped on main at 086dacf (pre-Alembic migrator), postgresql.
-- Frozen: never edit. tests/store/test_migrations.py builds this and upgrades it.

CREATE TABLE approvals (
	id VARCHAR(64) NOT NULL, 
	task_id VARCHAR(64) NOT NULL, 
	action VARCHAR(64) NOT NULL, 
	resource VARCHAR(256) NOT NULL, 
	args_digest VARCHAR(80) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	reason TEXT NOT NULL, 
	created_at FLOAT NOT NULL, 
	expires_at FLOAT NOT NULL, 
	decided_by VARCHAR(256), 
	decided_at FLOAT, 
	decision_id VARCHAR(64), 
	PRIMARY KEY (id)
);
CREATE INDEX ix_approvals_binding ON approvals (task_id, action, resource, args_digest);

CREATE TABLE audit_chains (
	chain VARCHAR(64) NOT NULL, 
	head_seq INTEGER NOT NULL, 
	head_hash VARCHAR(64) NOT NULL, 
	updated_at FLOAT NOT NULL, 
	PRIMARY KEY (chain)
);

CREATE TABLE audit_checkpoints (
	chain VARCHAR(64) NOT NULL, 
	seq INTEGER NOT NULL, 
	hash VARCHAR(64) NOT NULL, 
	ts FLOAT NOT NULL, 
	kid VARCHAR(128) NOT NULL, 
	jws TEXT NOT NULL, 
	PRIMARY KEY (chain, seq)
);

CREATE TABLE audit_events (
	chain VARCHAR(64) NOT NULL, 
	seq INTEGER NOT NULL, 
	v INTEGER NOT NULL, 
	ts FLOAT NOT NULL, 
	type VARCHAR(48) NOT NULL, 
	task_id VARCHAR(64), 
	root_task_id VARCHAR(64), 
	parent_task_id VARCHAR(64), 
	agent VARCHAR(2048), 
	delegator VARCHAR(1024), 
	decision_id VARCHAR(64), 
	lease_id VARCHAR(64), 
	trace_id VARCHAR(64), 
	payload TEXT NOT NULL, 
	prev_hash VARCHAR(64) NOT NULL, 
	hash VARCHAR(64) NOT NULL, 
	PRIMARY KEY (chain, seq)
);
CREATE INDEX ix_audit_root ON audit_events (root_task_id);
CREATE INDEX ix_audit_task_type_ts ON audit_events (task_id, type, ts);
CREATE INDEX ix_audit_ts ON audit_events (ts);

CREATE TABLE credential_leases (
	id VARCHAR(64) NOT NULL, 
	task_id VARCHAR(64) NOT NULL, 
	root_task_id VARCHAR(64) NOT NULL, 
	agent VARCHAR(2048) NOT NULL, 
	connector VARCHAR(32) NOT NULL, 
	audience VARCHAR(256) NOT NULL, 
	resource VARCHAR(256) NOT NULL, 
	scope VARCHAR(1024) NOT NULL, 
	issued_at FLOAT NOT NULL, 
	expires_at FLOAT NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	revocation VARCHAR(16) NOT NULL, 
	revoke_reason VARCHAR(32), 
	attempts INTEGER NOT NULL, 
	next_attempt_at FLOAT, 
	last_error VARCHAR(512), 
	revoked_at FLOAT, 
	node_id VARCHAR(64) NOT NULL, 
	material TEXT NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_credential_leases_task_id ON credential_leases (task_id);
CREATE INDEX ix_leases_revocation_next ON credential_leases (revocation, next_attempt_at);
CREATE INDEX ix_leases_state_expires ON credential_leases (state, expires_at);

CREATE TABLE credential_secrets (
	name VARCHAR(128) NOT NULL, 
	header VARCHAR(128) NOT NULL, 
	value_enc BYTEA NOT NULL, 
	created_at FLOAT NOT NULL, 
	updated_at FLOAT NOT NULL, 
	PRIMARY KEY (name)
);

CREATE TABLE delegations (
	id VARCHAR(64) NOT NULL, 
	parent_task_id VARCHAR(64) NOT NULL, 
	child_agent VARCHAR(2048) NOT NULL, 
	scope TEXT NOT NULL, 
	ttl_seconds INTEGER NOT NULL, 
	created_at FLOAT NOT NULL, 
	expires_at FLOAT NOT NULL, 
	redeemed_task_id VARCHAR(64), 
	PRIMARY KEY (id)
);
CREATE INDEX ix_delegations_parent_task_id ON delegations (parent_task_id);

CREATE TABLE dpop_jtis (
	key VARCHAR(64) NOT NULL, 
	expires_at FLOAT NOT NULL, 
	PRIMARY KEY (key)
);
CREATE INDEX ix_dpop_jtis_expires ON dpop_jtis (expires_at);

CREATE TABLE gateway_tool_pins (
	server VARCHAR(128) NOT NULL, 
	tool VARCHAR(128) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	digest VARCHAR(80) NOT NULL, 
	definition TEXT NOT NULL, 
	pending_digest VARCHAR(80), 
	pending_definition TEXT, 
	first_seen FLOAT NOT NULL, 
	changed_at FLOAT, 
	approved_at FLOAT, 
	approved_by VARCHAR(256), 
	PRIMARY KEY (server, tool)
);

CREATE TABLE resource_uses (
	agent VARCHAR(2048) NOT NULL, 
	resource VARCHAR(256) NOT NULL, 
	first_at FLOAT NOT NULL, 
	PRIMARY KEY (agent, resource)
);

CREATE TABLE revocation_feed (
	seq SERIAL NOT NULL, 
	ts FLOAT NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	task_id VARCHAR(64) NOT NULL, 
	lease_id VARCHAR(64), 
	audience VARCHAR(256), 
	reason VARCHAR(32) NOT NULL, 
	expires_at FLOAT NOT NULL, 
	PRIMARY KEY (seq)
);
CREATE INDEX ix_revocation_feed_ts ON revocation_feed (ts);

CREATE TABLE schema_migrations (
	version INTEGER NOT NULL, 
	name VARCHAR(100) NOT NULL, 
	applied_at FLOAT NOT NULL, 
	PRIMARY KEY (version)
);

CREATE TABLE signing_keys (
	kid VARCHAR(64) NOT NULL, 
	alg VARCHAR(16) NOT NULL, 
	public_jwk TEXT NOT NULL, 
	private_enc BYTEA NOT NULL, 
	created_at FLOAT NOT NULL, 
	retires_at FLOAT NOT NULL, 
	expires_at FLOAT NOT NULL, 
	PRIMARY KEY (kid)
);

CREATE TABLE tasks (
	id VARCHAR(64) NOT NULL, 
	agent VARCHAR(2048) NOT NULL, 
	attestation VARCHAR(32) NOT NULL, 
	agent_attrs TEXT NOT NULL, 
	delegator_sub VARCHAR(512), 
	delegator_iss VARCHAR(512), 
	intent VARCHAR(64) NOT NULL, 
	description TEXT NOT NULL, 
	scope TEXT NOT NULL, 
	created_at FLOAT NOT NULL, 
	expires_at FLOAT NOT NULL, 
	parent_id VARCHAR(64), 
	root_id VARCHAR(64) NOT NULL, 
	depth INTEGER NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	act_chain TEXT NOT NULL, 
	cnf_jkt VARCHAR(128), 
	closed_at FLOAT, 
	max_sensitivity_read INTEGER NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_tasks_agent_state ON tasks (agent, state);
CREATE INDEX ix_tasks_parent_id ON tasks (parent_id);
CREATE INDEX ix_tasks_root_id ON tasks (root_id);
CREATE INDEX ix_tasks_state_expires ON tasks (state, expires_at);

CREATE TABLE workload_entries (
	id VARCHAR(64) NOT NULL, 
	spiffe_id VARCHAR(2048) NOT NULL, 
	selectors TEXT NOT NULL, 
	attributes TEXT NOT NULL, 
	created_at FLOAT NOT NULL, 
	created_by VARCHAR(256) NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_workload_entries_spiffe_id ON workload_entries (spiffe_id);

INSERT INTO schema_migrations (version, name, applied_at) VALUES (1, 'core: keys, tasks, delegations, approvals, audit', 1764547200.0);
INSERT INTO schema_migrations (version, name, applied_at) VALUES (10, 'identity: workload registration entries, DPoP replay cache', 1764547200.0);
INSERT INTO schema_migrations (version, name, applied_at) VALUES (20, 'credentials: leases, revocation feed, injected secrets', 1764547200.0);
INSERT INTO schema_migrations (version, name, applied_at) VALUES (30, 'gateway: pinned MCP tool definitions', 1764547200.0);
INSERT INTO schema_migrations (version, name, applied_at) VALUES (40, 'audit: signed checkpoints', 1764547200.0);

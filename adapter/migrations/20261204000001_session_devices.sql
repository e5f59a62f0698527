-- A login replaces the earlier session of the same user in the same browser
-- (`DELETE … WHERE connector_id AND subject AND device_hash`). With an index
-- on the user alone that statement read every session of the user, so a
-- login's cost grew with the user's sessions. One index on all three columns
-- finds the browser's session directly, and serves the lookups of a user's
-- sessions as its prefix.
DROP INDEX sessions_user;
CREATE INDEX sessions_user_device ON sessions (connector_id, subject, device_hash);

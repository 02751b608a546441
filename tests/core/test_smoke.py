def test_open_and_authorize_allow(agent):
    """An agent opens a task and a read inside its scope is allowed."""
    r = agent.open([{"action": "read", "resource": "tickets.queue"}])
    assert r.status_code == 201, r.text
    tok = r.json()["task_token"]
    d = agent.authorize(tok, "read", "tickets.queue")
    assert d.status_code == 200, d.text
    assert d.json()["decision"] == "allow", d.json()

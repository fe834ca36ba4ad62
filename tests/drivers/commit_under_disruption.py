# Issue 18's transaction-mode hang stress (tests/tests/transaction_hang.rs): psycopg's
# test_commit_concurrency workload while other clients on the same small pool are closed and
# killed. Prints a JSON summary; exits 3 (with what each stuck worker was doing, the server
# connections' states and every thread's stack) when a worker makes no progress for 20 s.
import sys, threading, time, os, socket, random, faulthandler, json, traceback
import psycopg
port, direct_port, user, password, db, seconds, workloads = sys.argv[1:8]
deadline = time.monotonic() + float(seconds)
STUCK = 20.0
lock = threading.Lock()
progress, failures, counts = {}, [], {}
stop = threading.Event()

def connect(direct=False, **kw):
    return psycopg.connect(host="127.0.0.1", port=direct_port if direct else port, user=user,
                           password=password, dbname=db, connect_timeout=10, **kw)

def server_activity():
    # What the server connections are doing, straight from the server.
    try:
        with connect(direct=True, autocommit=True) as conn:
            return conn.execute(
                "select pid, state, query, (now() - state_change)::text from pg_stat_activity"
                " where usename = current_user and pid <> pg_backend_pid() order by pid").fetchall()
    except psycopg.Error as e:
        return repr(e)

def note(name, what):
    progress[name] = (time.monotonic(), what)

def drop_socket(conn):
    # Closes the client's side of the socket under libpq: pgvane sees EOF, no Terminate.
    s = socket.socket(fileno=os.dup(conn.fileno()))
    s.shutdown(socket.SHUT_RDWR)
    s.close()

def commit_concurrency(name):
    # psycopg's test_commit_concurrency: a thread commits in a loop while the main thread runs
    # a query and commits, 1000 times, on the same connection.
    rounds = 0
    while time.monotonic() < deadline and not stop.is_set():
        with connect() as conn:
            notices = []
            conn.add_notice_handler(lambda d: notices.append(d.message_primary))
            done = False
            errors = []
            def committer():
                try:
                    while not done:
                        conn.commit()
                except BaseException as e:
                    errors.append(repr(e))
            t = threading.Thread(target=committer, daemon=True)
            t.start()
            cur = conn.cursor()
            try:
                for i in range(1000):
                    note(name, f"round {rounds} iteration {i}")
                    cur.execute("select %s", (i,))
                    got = cur.fetchone()[0]
                    assert got == i, f"{got} for {i}"
                    conn.commit()
            finally:
                done = True
                t.join(STUCK)
            assert not errors, errors
            assert not notices, notices
        rounds += 1
    return rounds

def close_midway():
    conn = connect()
    conn.execute("select 1")
    conn.execute("create temp table if not exists t(x int)" if random.random() < 0.2 else "select 2")
    if random.random() < 0.5:
        drop_socket(conn)
    conn.close()

def terminate():
    conn = connect()
    pid = conn.execute("select pg_backend_pid()").fetchone()[0]  # in a transaction: holds a server
    with connect(direct=True, autocommit=True) as killer:
        killer.execute("select pg_terminate_backend(%s)", (pid,))
    try:
        conn.execute("select 1")
    except psycopg.OperationalError:
        pass
    conn.close()

def cancel():
    conn = connect(autocommit=True)
    def later():
        time.sleep(random.random() * 0.05)
        conn.cancel()
    t = threading.Thread(target=later)
    t.start()
    try:
        conn.execute("select pg_sleep(0.02 * %s)", (random.randint(0, 3),))
    except psycopg.errors.QueryCanceled:
        pass
    t.join()
    assert conn.execute("select 3").fetchone()[0] == 3
    conn.close()

def drop_mid_query():
    conn = connect(autocommit=True)
    t = threading.Timer(random.random() * 0.05, drop_socket, (conn,))
    t.start()
    try:
        conn.execute("begin; select pg_sleep(0.05); select 1")
    except psycopg.OperationalError:
        pass
    t.join()
    conn.close()

def copy_abandoned():
    conn = connect()
    conn.pgconn.send_query(b"copy (select generate_series(1, 100000)) to stdout")
    conn.close()

def prepared_then_dropped():
    conn = connect(prepare_threshold=0)
    for i in range(3):
        conn.execute("select %s::int + 1", (i,))
    if random.random() < 0.5:
        drop_socket(conn)
    conn.close()

def idle_in_transaction_killed():
    # The server ends the session itself (FATAL 25P03) while the client idles in a transaction.
    conn = connect()
    conn.execute("set idle_in_transaction_session_timeout = 50")
    time.sleep(0.2)
    try:
        conn.execute("select 1")
    except psycopg.OperationalError:
        pass
    conn.close()

# Never conn.close() from one thread while another waits on that connection: psycopg's C
# generators keep the freed libpq connection and go on polling its file descriptor, which a new
# connection may reuse (see transaction_hang.rs). Sockets are dropped with shutdown() instead,
# which leaves the descriptor to libpq.
DISRUPTIONS = [close_midway, terminate, cancel, drop_mid_query, copy_abandoned, prepared_then_dropped,
               idle_in_transaction_killed]

def disruptor(name, kinds):
    n = 0
    while time.monotonic() < deadline and not stop.is_set():
        kind = random.choice(kinds)
        note(name, f"{kind.__name__} {n}")
        try:
            kind()
        except psycopg.Error:
            pass
        n += 1
    return n

def run(name, f, *args):
    try:
        counts[name] = f(name, *args)
    except BaseException:
        failures.append(f"{name}: {traceback.format_exc()}")
    finally:
        progress.pop(name, None)

threads = [threading.Thread(target=run, args=(f"commit{i}", commit_concurrency), daemon=True)
           for i in range(int(workloads))]
threads += [threading.Thread(target=run, args=(f"disrupt{i}", disruptor, DISRUPTIONS), daemon=True)
            for i in range(4)]
for t in threads: t.start()
while any(t.is_alive() for t in threads):
    time.sleep(0.5)
    now = time.monotonic()
    stuck = {n: w for n, (at, w) in list(progress.items()) if now - at > STUCK}
    if stuck:
        print(json.dumps({"stuck": stuck, "counts": counts, "failures": failures,
                          "server connections": server_activity()}, default=str), flush=True)
        faulthandler.dump_traceback(file=sys.stderr)
        os._exit(3)
print(json.dumps({"counts": counts, "failures": failures}), flush=True)
sys.exit(1 if failures else 0)

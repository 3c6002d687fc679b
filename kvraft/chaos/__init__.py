"""Jepsen-style fault testing of a real kvraft cluster (`kvraft chaos`).

Running it
----------
::

    kvraft chaos --nodes 5 --time 60 --nemesis kill,pause,partition --seed 7 --report DIR

starts N ``kvraft serve`` processes, node i on its own loopback address
127.B.C.i (fsync on), runs concurrent clients through the HTTP API while a
nemesis SIGKILLs and restarts nodes (one, the leader, or a majority), pauses
them with SIGSTOP/SIGCONT, and partitions them with iptables rules in a chain
of its own (Jepsen's shapes: one node or the leader isolated, halves, a bridge,
a majorities ring). Partitions need root and iptables; without them the run
says "partitions skipped" and goes on. At the end it heals everything, waits
for every node to follow one leader and catch up, reads every key, stops the
nodes and removes its rules (also after an error or a Ctrl-C), checks the
history and exits 0 only when every check passed.

Reading the report (``DIR/report.txt``, also printed; ``DIR/report.json``)
--------------------------------------------------------------------------
* operations: how many reads, writes, compare-and-sets (``cas``) and set adds
  ended ``ok``, ``fail`` (certainly not applied: a 503, a refused connection)
  or ``info`` (unknown: a 504 or a timeout; it may apply later, or never);
* faults: each fault with its start and end, in seconds since the workload
  started (the report gives the wall-clock start, the clock of the node logs);
* availability: successful operations per second; the zeros are the outages;
* unavailability after faults on the leader: the longest stretch without any
  successful operation after each fault that hit the leader (a restart costs
  the Python start-up, a pause or partition an election timeout);
* elections seen, unexpected node exits (a node that refused to restart is a
  bug), and how long the healed cluster took to converge;
* set: lost acknowledged writes (must be 0), elements nobody added, elements
  whose add was answered 503 yet applied (both must be 0);
* ``linearizable: yes|no|unknown``: a WGL search per key over the register
  histories (``unknown``: the time budget ran out, never a pass). On ``no``, the
  smallest sub-history that fails, each op as ``[called, returned] pN status
  op(key) args -> result (node N)`` in ms, the op that cannot take effect
  marked, and ``DIR/timeline.html`` drawing it per client process;
* ``watch: ok|violated|skipped``: three watchers held watch streams open on the
  nodes all along (resuming on another node after a failure, re-listing after a
  ``410 compacted``) and `watch_check` checked what they got: ordered, unique,
  atomic, bookmarkable, resumable, reliable (no gap, and every event agrees with
  the acknowledged writes), the same change at each revision everywhere. On
  ``violated``, the first violation (property, watcher, stream, node, revision).
  ``skipped``: the nodes do not serve ``GET /v1/watch``; ``--no-watch`` leaves it out.
* ``bank: ok|violated``: five accounts opened with 100 each, clients moving money
  with transactions guarded by the accounts' revisions and auditing every balance in
  one transaction (`bank`): every audit must total 500, and each account's transfers
  and audits must be linearizable (acknowledged transfers all there, in real-time
  order; unknown ones in or out). ``--no-bank`` leaves it out.
* ``lock: ok|violated``: four clients take one lock with 3 s leases kept alive in the
  background, write a register with transactions fenced by the lock's token
  (``X-Kvraft-Fence``), release and revoke; some holders stall past their lease first (a
  paused client) and write anyway (`locks`). The register's history (a journal key per
  accepted write, listed after healing) must show tokens that never decrease and no two
  holders' writes interleaving, agree with every lock read of who held the lock, and hold
  every acknowledged write and nothing refused (`lock_check`). The line counts the rounds
  that held the lock and the stalled holders' writes refused with 412. ``--no-lock`` leaves
  it out.

``DIR/history.jsonl`` (one JSON object per client call and answer) and
``DIR/nemesis.jsonl`` keep the raw record, ``DIR/watch.jsonl`` every line the watchers
received; ``DIR/nodes/`` the node logs.

The parts
---------
* `cluster`    node processes: start, SIGKILL, SIGSTOP/SIGCONT, restart, status polls;
* `netfilter`  iptables rules that cut single links between node addresses;
* `nemesis`    the seeded fault schedule (pure) and its execution;
* `workload`   register and set clients, and how an HTTP answer maps to an outcome;
* `watchers`   the watch streams held open for the run, recorded line by line;
* `bank`       the bank's transfer and audit clients, and the bank check;
* `locks`      the lock clients: leases, keepalives, a fenced register, stalling holders;
* `lock_check` the lock check: token order, exclusive holders, lock reads, durability;
* `history`    the JSON-lines history and nemesis logs, written and read back;
* `checks`     the set check and the linearizability check of the registers;
* `watch_check` the watch streams' properties, against the history and each other;
* `report`     the numbers, the text report and the HTML timeline of a violation;
* `runner`     one whole run, with teardown that always happens.
"""

from __future__ import annotations

__all__: list[str] = []

"""Simulated secure aggregation for synchronous rounds.

Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal, Seth, "Practical Secure
Aggregation for Privacy-Preserving Machine Learning", CCS 2017 (SecAgg), and Bell, Bonawitz,
Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead",
CCS 2020 (SecAgg+: masks only between neighbours of a sparse k-regular graph).

* :mod:`~fedray.secagg.ring` — fixed-point quantisation into Z_{2^b} and the wire format;
* :mod:`~fedray.secagg.graph` — who masks with whom (complete graph, or a seeded Harary graph);
* :mod:`~fedray.secagg.masks` — the client's masking and the server's unmasking;
* :mod:`~fedray.secagg.costs` — the protocol's extra messages: bytes (closed form) and time;
* :mod:`~fedray.secagg.transform` — the client transform and its server-side ``finalize``.
"""

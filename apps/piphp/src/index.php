<?php
// PiPHP: which pod answered, on which node, and a little CPU work per request so the
// HorizontalPodAutoscaler has something to scale on (as in Kubernetes' php-apache walkthrough).
$path = parse_url($_SERVER['REQUEST_URI'] ?? '/', PHP_URL_PATH);
if ($path === '/healthz') {
    header('Content-Type: text/plain');
    echo "ok\n";
    exit;
}
$work = min(max((int)($_GET['work'] ?? 20000), 0), 2000000);
$x = 0.0001;
for ($i = 0; $i < $work; $i++) {
    $x += sqrt($x);
}
header('Content-Type: application/json');
echo json_encode([
    'app' => 'piphp',
    'pod' => gethostname(),
    'node' => getenv('NODE_NAME') ?: null,
    'version' => getenv('APP_VERSION') ?: null,
    'work' => $work,
], JSON_PRETTY_PRINT), "\n";

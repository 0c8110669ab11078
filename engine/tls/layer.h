// File: engine/tls/layer.h
// What the configuration's contexts (config.cc) call into the connection layer (layer.cc).
// Threads: the connection's owner thread (OpenSSL calls it from inside the layer's calls).
#ifndef ENGINE_TLS_LAYER_H_
#define ENGINE_TLS_LAYER_H_

#include <openssl/ssl.h>

namespace tls {

// SSL_CTX_set_keylog_callback's: keeps a connection's application traffic secrets, which it
// runs on once a TLS 1.3 handshake is done (the SSL object is then freed).
void on_keylog(const SSL* ssl, const char* line);

}  // namespace tls

#endif  // ENGINE_TLS_LAYER_H_

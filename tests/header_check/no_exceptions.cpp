// Built with -fno-exceptions: a valid call works, an invalid one prints the aqua message and aborts.
#include "aqua/aqua.hpp"

#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  const bool invalid = argc > 1 && std::strcmp(argv[1], "invalid") == 0;
  float q[3 * 4] = {}, k[2 * 2 * 4] = {}, v[2 * 2 * 4] = {}, out[3 * 4];
  const int hq = invalid ? 3 : 2;  // 3 query heads over 2 KV heads is not a valid grouping
  aqua::dense_decode<float>(aqua::make_view(q, hq, 4), aqua::make_view(k, 2, 2, 4),
                            aqua::make_view(v, 2, 2, 4), aqua::make_view(out, hq, 4));
  std::printf("no-exceptions build ran a valid decode\n");
  return 0;
}

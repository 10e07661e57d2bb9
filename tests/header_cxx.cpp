// The public header must compile as C++ and link.
#include "qvl.h"
int main() {
    return qvl_status_str(QVL_OK)[0] == 'o' ? 0 : 1;
}

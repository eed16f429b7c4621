/*
 * rampart-store main: hand the stage's parameters to the server skeleton.
 */
#include "mail/stage.h"

extern const struct stage_def store_stage;

int main(int argc, char **argv)
{
	return stage_main(&store_stage, argc, argv);
}
